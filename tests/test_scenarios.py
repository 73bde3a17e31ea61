"""Tests for `compare.py --scenario`: the cells each preset plans, the options it refuses beside it, the stream order
the data cannot give refused before any run, and a tiny scenario end to end (its columns and its plot)."""

import dataclasses
import json
from functools import partial
from pathlib import Path

import pytest
from helpers import assert_usage_error
from test_compare import compare_argv

from zerosiam_hf import comparison, pipeline
from zerosiam_hf.commands import compare
from zerosiam_hf.noise import NOISE_KINDS
from zerosiam_hf.scenarios import SCENARIOS


# What each preset sets in its cells, written out here rather than read back from the module.
EXPECTED = {
    "batch_size": {f"batch{n}": {"per_device_train_batch_size": n} for n in (1, 2, 4, 16)},
    "learning_rate": {
        "lr1e-4": {"learning_rate": 1e-4},
        "lr5e-4": {"learning_rate": 5e-4},
        "lr2e-3": {"learning_rate": 2e-3},
        "lr5e-3": {"learning_rate": 5e-3},
    },
    **{
        f"noise_{kind}": {f"severity{s}": {"noise": kind, "noise_severity": s} for s in range(1, 6)}
        for kind in NOISE_KINDS
    },
    "stream_order": {order: {"stream_order": order} for order in ("iid", "blocked", "interleaved", "by_answer")},
}
DEFAULTS = {"per_device_train_batch_size": 16, "learning_rate": 5e-4, "noise": None, "noise_severity": None}


def scenario_argv(model_dir, dataset, output_dir, name, *extra):
    """compare_argv with `--scenario name`, less its batch size: the batch_size scenario sets it."""
    argv = compare_argv(model_dir, dataset, output_dir)
    start = argv.index("--per_device_train_batch_size")
    return [*argv[:start], *argv[start + 2 :], "--scenario", name, *extra]


def refuse_runs(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a run was started")

    monkeypatch.setattr(pipeline, "adapt", refuse)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_scenario_plans_its_cells_with_their_settings(
    capsys, tiny_model_dir, problems_file, tmp_path, monkeypatch, name
):
    planned = []
    plan_runs = comparison.plan_runs

    def recording(*args, **kwargs):
        planned.extend(plan_runs(*args, **kwargs))
        return planned

    output_dir = tmp_path / "cmp"
    argv = scenario_argv(tiny_model_dir, problems_file, output_dir, name, "--dry_run", "true")
    monkeypatch.setattr(compare, "plan_runs", recording)
    # --noise_seed is not a scenario's: it goes with every cell
    result = compare.main([*argv, "--synthetic_preset", "add_subtract", "--synthetic_n", "8", "--noise_seed", "3"])

    cells = EXPECTED[name]
    assert list(result["plan"]) == list(cells) and result["runs"] == len(cells) * 2 * 2
    # none takes no optimizer step: across the learning rates its runs of a seed are one run
    assert result["made"] == result["runs"] - ((len(cells) - 1) * 2 if name == "learning_rate" else 0)
    assert {key: plan["settings"] for key, plan in result["plan"].items()} == cells
    assert [(run.key, run.method, run.seed) for run in planned] == [
        (key, method, seed) for key in cells for method in ("none", "zerosiam") for seed in (0, 1)
    ]
    for run in planned:
        for option, default in DEFAULTS.items():
            where = run.data if hasattr(run.data, option) else run.args
            assert getattr(where, option) == cells[run.key].get(option, default), (run.key, option)
        assert run.data.stream_order == cells[run.key].get("stream_order", "iid")
        assert run.args.seed == run.seed and run.data.noise_seed == 3
        assert run.args.output_dir.endswith(f"cmp.partial/runs/{run.key}/{run.method}-seed{run.seed}")
        assert run.data.dataset.endswith(f"synthetic-add_subtract-seed{run.seed}.jsonl")
    printed = capsys.readouterr().out.splitlines()
    first = next(iter(cells))
    flags = " ".join(f"--{option} {value}" for option, value in cells[first].items())
    assert f"{first} ({flags}): 8 problems from the synthetic preset add_subtract" in printed[0]
    assert printed[0].endswith("runs none zerosiam x seeds 0 1")
    assert not output_dir.exists() and not (tmp_path / "cmp.partial").exists()


@pytest.mark.parametrize(
    ("scenario", "given", "option"),
    [
        ("learning_rate", ["--learning_rate", "1e-3"], "--learning_rate"),
        ("learning_rate", ["--learning_rate=5e-4"], "--learning_rate"),  # the default, given: still the cells' own
        ("batch_size", ["--per_device_train_batch_size", "3"], "--per_device_train_batch_size"),
        ("noise_typos", ["--noise", "verbosity", "--noise_severity", "2"], "--noise"),
        ("stream_order", ["--stream_order", "file"], "--stream_order"),
    ],
)
def test_an_option_the_scenario_sets_is_refused_beside_it(
    capsys, tiny_model_dir, problems_file, tmp_path, monkeypatch, scenario, given, option
):
    refuse_runs(monkeypatch)
    argv = scenario_argv(tiny_model_dir, problems_file, tmp_path / "cmp", scenario, *given)
    line = assert_usage_error(capsys, partial(compare.main, argv), f"--scenario {scenario} sets {option} in its cells")
    assert line.endswith(f"drop {option}, or drop --scenario.")
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "cmp.partial").exists()


def test_an_option_the_scenario_sets_is_refused_from_a_config_file_too(
    capsys, tiny_model_dir, problems_file, tmp_path
):
    config = tmp_path / "run.yaml"
    config.write_text("noise_severity: 3\nnoise: typos\n")
    argv = compare_argv(tiny_model_dir, problems_file, tmp_path / "cmp", "--scenario", "noise_distractors")
    call = partial(compare.main, [*argv, "--config", str(config)])
    assert_usage_error(capsys, call, "--scenario noise_distractors sets --noise in its cells (1, 2, 3, 4, 5)")


def test_unknown_scenario_and_scenario_with_datasets_are_refused(capsys, tiny_model_dir, problems_file, tmp_path):
    argv = compare_argv(tiny_model_dir, problems_file, tmp_path / "cmp", "--scenario", "noise")
    assert_usage_error(capsys, partial(compare.main, argv), "--scenario must be one of batch_size, learning_rate")
    argv = compare_argv(tiny_model_dir, problems_file, tmp_path / "cmp", "--scenario", "batch_size")
    call = partial(compare.main, [*argv, "--datasets", problems_file, problems_file])
    assert_usage_error(capsys, call, "--scenario and --datasets exclude each other")


def test_scenario_cells_plans_only_the_cells_named_in_the_scenarios_order(tiny_model_dir, problems_file, tmp_path):
    argv = scenario_argv(tiny_model_dir, problems_file, tmp_path / "cmp", "noise_typos", "--dry_run", "true")
    result = compare.main([*argv, "--scenario_cells", "severity5", "severity1", "--synthetic_n", "8"])
    assert list(result["plan"]) == ["severity1", "severity5"] and result["runs"] == 2 * 2 * 2
    # a stream of one family runs the cells that need none
    argv = scenario_argv(tiny_model_dir, problems_file, tmp_path / "cmp", "stream_order", "--dry_run", "true")
    result = compare.main([*argv, "--scenario_cells", "iid", "by_answer", "--synthetic_preset", "base"])
    assert list(result["plan"]) == ["iid", "by_answer"]


def test_more_cells_later_make_only_the_new_cells_runs(tiny_model_dir, problems_file, tmp_path, monkeypatch):
    argv = compare_argv(tiny_model_dir, problems_file, tmp_path / "cmp", "--scenario", "learning_rate")
    argv[argv.index("--methods") + 1 : argv.index("--seeds") + 3] = ["none", "tent", "--seeds", "0"]
    compare.main([*argv, "--scenario_cells", "lr1e-4"])
    made = []
    adapt = pipeline.adapt
    monkeypatch.setattr(
        pipeline, "adapt", lambda *args, **kwargs: made.append(args[3].output_dir) or adapt(*args, **kwargs)
    )
    result = compare.main([*argv, "--scenario_cells", "lr1e-4", "lr5e-4", "--overwrite", "true"])
    # none's run of lr1e-4 is copied into lr5e-4, whose learning rate it never reads
    assert [Path(path).parent.name + "/" + Path(path).name for path in made] == ["lr5e-4/tent-seed0"]
    assert list(result["scenario"]["cells"]) == ["lr1e-4", "lr5e-4"]


def test_unknown_scenario_cells_are_refused_in_one_line(capsys, tiny_model_dir, problems_file, tmp_path):
    argv = scenario_argv(tiny_model_dir, problems_file, tmp_path / "cmp", "learning_rate")
    line = assert_usage_error(capsys, partial(compare.main, [*argv, "--scenario_cells", "lr1e-4", "lr3e-4"]), "lr3e-4")
    assert line.endswith("not a cell of --scenario learning_rate, whose cells are lr1e-4, lr5e-4, lr2e-3, lr5e-3.")
    argv = compare_argv(tiny_model_dir, problems_file, tmp_path / "cmp", "--scenario_cells", "iid")
    assert_usage_error(capsys, partial(compare.main, argv), "--scenario_cells chooses cells of a --scenario")
    assert not (tmp_path / "cmp").exists()


def test_a_stream_order_the_data_cannot_give_is_refused_before_any_run(
    capsys, tiny_model_dir, problems_file, tmp_path, monkeypatch
):
    refuse_runs(monkeypatch)
    argv = compare_argv(tiny_model_dir, problems_file, tmp_path / "cmp", "--scenario", "stream_order")
    base = [*argv, "--synthetic_preset", "base", "--synthetic_n", "8"]
    line = assert_usage_error(capsys, partial(compare.main, base), "--stream_order blocked and interleaved")
    assert "--synthetic_preset base drew only 'add' (seed 0); use --synthetic_preset add_subtract or" in line
    # a file whose rows name no family: the iid cell would run first, and is not started
    assert_usage_error(capsys, partial(compare.main, argv), "names no problem families")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["problems.jsonl"]


def test_a_two_cell_scenario_writes_its_columns_and_its_plot(tiny_model_dir, problems_file, tmp_path, monkeypatch):
    two = dataclasses.replace(SCENARIOS["learning_rate"], cells=SCENARIOS["learning_rate"].cells[:2])
    monkeypatch.setitem(SCENARIOS, "learning_rate", two)
    output_dir = tmp_path / "cmp"
    argv = compare_argv(tiny_model_dir, problems_file, output_dir, "--scenario", "learning_rate")
    argv[argv.index("--methods") + 1 : argv.index("--seeds") + 3] = ["none", "tent", "--seeds", "0"]
    made = []
    adapt = pipeline.adapt
    monkeypatch.setattr(
        pipeline, "adapt", lambda *args, **kwargs: made.append(args[3].output_dir) or adapt(*args, **kwargs)
    )
    result = compare.main(argv)

    # none's run is made once and copied into the other cell, whose learning rate it never read
    assert [Path(path).parent.name + "/" + Path(path).name for path in made] == [
        "lr1e-4/none-seed0",
        "lr1e-4/tent-seed0",
        "lr5e-4/tent-seed0",
    ]
    runs = output_dir / "runs"
    assert (runs / "lr5e-4" / "none-seed0" / "predictions.jsonl").read_bytes() == (
        runs / "lr1e-4" / "none-seed0" / "predictions.jsonl"
    ).read_bytes()

    for key, lr in (("lr1e-4", 1e-4), ("lr5e-4", 5e-4)):
        record = json.loads((output_dir / "runs" / key / "tent-seed0" / "run.json").read_text())
        assert record["config"]["ZeroSiamConfig"]["learning_rate"] == lr
    none, tent = result["accuracy_flexible"]
    assert tent["method"] == "tent" and set(tent["n"]) == {"lr1e-4", "lr5e-4"}
    assert none["lr1e-4"] == none["lr5e-4"]
    paired = [(r["dataset"], r["method"], "vs_none" in r) for r in result["paired"]]
    assert paired == [
        ("lr1e-4", "none", False),
        ("lr1e-4", "tent", True),
        ("lr5e-4", "none", False),
        ("lr5e-4", "tent", True),
    ]
    table = (output_dir / "comparison.md").read_text()
    assert "| method | seeds | lr1e-4 | lr5e-4 | avg |" in table
    assert "| cell | method | flexible 95% CI |" in table and "| cell | method | collapsed (accuracy) |" in table
    written = json.loads((output_dir / "comparison.json").read_text())
    assert written["scenario"]["cells"]["lr5e-4"] == {"label": "5e-4", "learning_rate": 5e-4}
    assert written["plots"][-1] == "scenario_learning_rate.png"
    assert (output_dir / "scenario_learning_rate.png").read_bytes().startswith(b"\x89PNG")
