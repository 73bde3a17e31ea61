"""Tests for scripts/compare.py: methods x seeds under the online protocol, the table, the plots, and resuming."""

import errno
import json
import os
import socket
import statistics
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers import DATA_DIR, PROBLEMS, REPO, adapt_argv, assert_usage_error, write_problems

from zerosiam_hf import comparison, modeling, pipeline, records
from zerosiam_hf.commands import adapt, compare
from zerosiam_hf.synthetic import SHIFTS, generate_problems
from zerosiam_hf.trainer import RUN_STATE_FILE


def compare_argv(model_dir, dataset, output_dir, *extra):
    return [
        *("--model", model_dir, "--dataset", dataset, "--output_dir", str(output_dir)),
        *("--methods", "none", "zerosiam", "--seeds", "0", "1"),
        *("--per_device_train_batch_size", "3", "--max_new_tokens", "4", "--report_to", "none"),
        *("--disable_tqdm", "true", "--use_cpu", "true"),
        *extra,
    ]


def test_compare_writes_table_plots_and_every_run(tiny_model_dir, problems_file, tmp_path, monkeypatch):
    output_dir = tmp_path / "cmp"
    result = compare.main(compare_argv(tiny_model_dir, problems_file, output_dir))

    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {"none", "zerosiam"}
    for row in rows.values():
        assert row["seeds"] == 2 and row["n"] == 6
        assert 0 <= row["degenerate"] <= 1
    assert rows["zerosiam"]["final_entropy"] > 0 and rows["zerosiam"]["final_logit_norm"] > 0
    # the paired statistics read every answer: the difference is the one between the two rows' accuracies
    paired = {row["method"]: row for row in result["paired"]}
    assert "vs_none" not in paired["none"] and set(paired) == {"none", "zerosiam"}
    versus = paired["zerosiam"]["vs_none"]
    assert versus["difference"] == pytest.approx(rows["zerosiam"]["flexible_mean"] - rows["none"]["flexible_mean"])
    assert versus["ci"][0] <= versus["difference"] <= versus["ci"][1] and versus["wins"] + versus["losses"] <= 6
    low, high = paired["none"]["flexible_ci"]
    assert low <= rows["none"]["flexible_mean"] <= high
    # `none` runs no loss forward, so it has no loss-side diagnostics, only answer-side ones.
    assert rows["none"]["final_entropy"] is None
    for method in ("none", "zerosiam"):
        for seed in (0, 1):
            record = json.loads((output_dir / "runs" / f"{method}-seed{seed}" / "run.json").read_text())
            assert record["config"]["ZeroSiamConfig"]["method"] == method
            assert record["config"]["ZeroSiamConfig"]["seed"] == seed
    table = (output_dir / "comparison.md").read_text()
    lines = table.split("\n\n")[0].splitlines()
    assert len(lines) == 4  # header, rule, none, zerosiam
    assert lines[2].startswith("| none | 2 | 6 |") and lines[3].startswith("| zerosiam | 2 | 6 |")
    for name in ("collapse_entropy.png", "collapse_logit_norm.png", "online_accuracy_flexible.png"):
        assert (output_dir / name).read_bytes().startswith(b"\x89PNG")

    # Run again with the same settings: finished runs are read back, never redone.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was redone")

    monkeypatch.setattr(pipeline, "adapt", refuse)
    again = compare.main(compare_argv(tiny_model_dir, problems_file, output_dir))
    assert again["rows"] == result["rows"]


def test_a_hub_token_reaches_no_file_of_a_comparison(tiny_model_dir, problems_file, tmp_path, monkeypatch):
    output_dir = tmp_path / "cmp"
    argv = compare_argv(tiny_model_dir, problems_file, output_dir, "--methods", "none", "--hub_token", "hf_SECRET123")
    monkeypatch.setattr(sys, "argv", ["compare.py", *argv])
    compare.main(argv)
    assert (output_dir / "comparison.json").is_file()
    leaked = [path for path in output_dir.rglob("*") if path.is_file() and b"hf_SECRET123" in path.read_bytes()]
    assert leaked == []


def test_runs_only_processes_share_a_folder_and_the_comparison_reuses_their_runs(
    tiny_model_dir, problems_file, tmp_path, monkeypatch
):
    output_dir, staging = tmp_path / "shared", tmp_path / "shared.partial"
    first = compare_argv(tiny_model_dir, problems_file, output_dir, "--runs_only", "true")
    first[first.index("--methods") + 1 : first.index("--seeds")] = ["none"]
    assert compare.main(first) == {"runs": 2}
    assert not output_dir.exists() and (staging / "runs" / "none-seed1" / "run.json").is_file()
    # a runs-only process neither takes the folder's lock (another one may hold it) nor checks its comparison
    (staging / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    second = compare_argv(tiny_model_dir, problems_file, output_dir, "--runs_only", "true")
    second[second.index("--methods") + 1 : second.index("--seeds")] = ["zerosiam"]
    assert compare.main(second) == {"runs": 2}
    (staging / ".lock").unlink()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was redone")

    monkeypatch.setattr(pipeline, "adapt", refuse)
    result = compare.main(compare_argv(tiny_model_dir, problems_file, output_dir))
    assert {row["method"] for row in result["rows"]} == {"none", "zerosiam"}
    assert json.loads((output_dir / "comparison.json").read_text())["rows"] == result["rows"]
    assert not staging.exists() and (output_dir / "runs" / "zerosiam-seed0" / "run.json").is_file()
    # runs-only processes after the comparison was published reuse its runs too
    assert compare.main(first) == {"runs": 2}


def test_overwrite_keeps_the_runs_that_runs_only_processes_made_for_the_comparison(
    tiny_model_dir, problems_file, tmp_path, monkeypatch
):
    # A published comparison of none; runs-only processes then make tent's runs for a comparison of both, which
    # --overwrite true is needed to publish over the first: it takes their runs over instead of starting again.
    output_dir = tmp_path / "cmp"
    argv = compare_argv(tiny_model_dir, problems_file, output_dir, "--seeds", "0")
    compare.main([*argv, "--methods", "none"])
    assert compare.main([*argv, "--methods", "tent", "--runs_only", "true"]) == {"runs": 1}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was redone")

    monkeypatch.setattr(pipeline, "adapt", refuse)
    result = compare.main([*argv, "--methods", "none", "tent", "--overwrite", "true"])
    assert [row["method"] for row in result["rows"]] == ["none", "tent"]
    assert (output_dir / "runs" / "tent-seed0" / "run.json").is_file()


def test_compare_reports_what_each_method_spent_and_the_k_sample_accuracies(tiny_model_dir, problems_file, tmp_path):
    argv = compare_argv(tiny_model_dir, problems_file, tmp_path / "cost", "--num_generations", "3")
    argv[argv.index("--methods") + 1 : argv.index("--seeds")] = ["none", "tent", "rent"]
    argv[argv.index("--seeds") + 1 : argv.index("--seeds") + 3] = ["0"]
    result = compare.main(argv)
    cost = {row["method"]: row for row in result["cost"]}
    runs = {m: json.loads((tmp_path / "cost" / "runs" / f"{m}-seed0" / "run.json").read_text()) for m in cost}
    for method, row in cost.items():
        spent = runs[method]["results"]["cost"]
        assert row["per_problem"]["generated_tokens"] == spent["generated_tokens"] / 6
        assert row["relative"]["generated_tokens"] == pytest.approx(
            spent["generated_tokens"] / runs["none"]["results"]["cost"]["generated_tokens"]
        )
    assert cost["none"]["per_problem"]["trained_tokens"] == 0 and cost["tent"]["per_problem"]["trained_tokens"] > 0
    # three sampled answers a prompt, each as long as its first few tokens allow: more than one greedy answer
    assert cost["rent"]["relative"]["generated_tokens"] > 1.5
    (samples,) = result["samples"]
    assert samples["method"] == "rent" and samples["k"] == 3 and 0 <= samples["maj_at_k"] <= 100
    table = (tmp_path / "cost" / "comparison.md").read_text()
    assert "Cost per problem (ratio to none)" in table and "| none | " in table.split("Cost per problem")[1]
    assert "| rent | 3 |" in table


def test_compare_synthetic_preset_draws_one_problem_set_per_seed(tiny_model_dir, problems_file, tmp_path):
    output_dir = tmp_path / "synthetic"
    argv = compare_argv(tiny_model_dir, problems_file, output_dir, "--synthetic_preset", "base", "--synthetic_n", "4")
    result = compare.main(argv)
    assert all(row["n"] == 4 for row in result["rows"])
    problem_sets = {seed: (output_dir / f"synthetic-base-seed{seed}.jsonl").read_text() for seed in (0, 1)}
    assert problem_sets[0] != problem_sets[1]
    assert problem_sets[0].splitlines() == [json.dumps(row) for row in generate_problems(4, SHIFTS["base"])]
    for method in ("none", "zerosiam"):
        for seed in (0, 1):
            record = json.loads((output_dir / "runs" / f"{method}-seed{seed}" / "run.json").read_text())
            assert record["config"]["DataArguments"]["dataset"].endswith(f"synthetic-base-seed{seed}.jsonl")


def test_compare_rejects_unknown_method(capsys, tiny_model_dir, problems_file, tmp_path):
    argv = compare_argv(tiny_model_dir, problems_file, tmp_path / "bad")
    argv[argv.index("--methods") + 1] = "magic"
    with pytest.raises(SystemExit) as exit_info:
        compare.main(argv)
    assert exit_info.value.code == 2
    assert "--methods: unknown magic" in capsys.readouterr().err


def test_summary_names_an_ablation_and_averages_over_seeds():
    def record(ablation, flexible, entropies):
        history = [{"step": i + 1, "collapse/entropy": e, "answers/degenerate": 0.5} for i, e in enumerate(entropies)]
        return {
            "config": {"ZeroSiamConfig": {"ablation": ablation}},
            "results": {"online": {"n": 8, "accuracy_strict": 0.0, "accuracy_flexible": flexible}},
            "log_history": history,
            "timings": {"adapt_seconds": 10.0},
        }

    rows = comparison.summarize(
        {"zerosiam": [record("no_stop_gradient", 25.0, [1.0, 0.2]), record("no_stop_gradient", 50.0, [1.0, 0.4])]}
    )
    (row,) = rows
    assert row["method"] == "zerosiam (no_stop_gradient)" and row["seeds"] == 2
    assert row["flexible_mean"] == 37.5 and row["flexible_std"] == pytest.approx(17.6776695)
    assert row["final_entropy"] == pytest.approx(0.3) and row["degenerate"] == 0.5
    assert row["final_logit_norm"] is None
    assert comparison.summarize({"tent": [record("none", 10.0, [0.5])]})[0]["method"] == "tent"


def write_math_problems(path, n: int = 4) -> str:
    rows = [{"question": f"What is {i} + {i}?", "answer": f"${2 * i}$"} for i in range(1, n + 1)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_compare_over_several_datasets_writes_the_papers_layout(tiny_model_dir, problems_file, tmp_path):
    output_dir = tmp_path / "suite"
    second = write_problems(tmp_path / "algebra.jsonl", [{"question": q, "answer": a} for q, a in PROBLEMS[:4]])
    argv = compare_argv(tiny_model_dir, problems_file, output_dir, "--datasets", problems_file, second)
    result = compare.main(argv)

    for metric in ("accuracy_flexible", "accuracy_strict"):
        rows = {row["method"]: row for row in result[metric]}
        assert set(rows) == {"none", "zerosiam"}
        for row in rows.values():
            assert row["n"] == {"problems": 6, "algebra": 4} and row["seeds"] == 2
            per_seed = [
                statistics.fmean(
                    json.loads((output_dir / "runs" / key / f"{method}-seed{seed}" / "run.json").read_text())[
                        "results"
                    ]["online"][metric]
                    for key in ("problems", "algebra")
                )
                for method in [row["method"]]
                for seed in (0, 1)
            ]
            assert row["average"] == pytest.approx((statistics.fmean(per_seed), statistics.stdev(per_seed)))
    table = (output_dir / "comparison.md").read_text()
    assert "| method | seeds | problems | algebra | avg |" in table
    assert "| n | | 6 | 4 | |" in table
    assert "Reported by the paper" not in table  # none of the paper's benchmarks is in this comparison
    # the paired statistics come per benchmark, each method beside none on that benchmark's problems
    assert [(row["dataset"], row["method"], "vs_none" in row) for row in result["paired"]] == [
        ("problems", "none", False),
        ("problems", "zerosiam", True),
        ("algebra", "none", False),
        ("algebra", "zerosiam", True),
    ]
    assert "| benchmark | method | flexible 95% CI | vs none (points) |" in table


def test_math_checker_flag_scores_latex_answers(tiny_model_dir, tmp_path):
    math_file = write_math_problems(tmp_path / "algebra.jsonl")
    output_dir = tmp_path / "math"
    argv = compare_argv(tiny_model_dir, math_file, output_dir, "--checker", "math", "--seeds", "0")
    compare.main(argv)
    record = json.loads((output_dir / "runs" / "zerosiam-seed0" / "run.json").read_text())
    assert record["data"]["checker"] == "math"
    assert record["config"]["DataArguments"]["checker"] == "math"


def test_paper_table_is_reported_apart_and_only_for_its_benchmarks():
    table = comparison.paper_table(["math500", "aime24", "college_math", "minerva_math"])
    assert table.splitlines()[0] == "| method | Math-500 | AIME24 | CollegeMath | Minerva | avg |"
    assert "| ZeroSiam | 52.60 | 13.33 | 26.25 | 22.06 | 28.56 |" in table
    assert "| no adaptation | 49.20 | 3.33 | 25.00 | 20.96 | 24.62 |" in table
    partial = comparison.paper_table(["gsm8k", "math500"])
    assert partial.splitlines()[0] == "| method | Math-500 |" and "avg" not in partial
    assert comparison.paper_table(["gsm8k"]) == ""


def test_paper_suite_config_dry_run_resolves_every_benchmark(capsys, monkeypatch):
    if not all((DATA_DIR / name / "test.jsonl").is_file() for name in ("math500", "aime24", "college_math")):
        pytest.skip(f"{DATA_DIR} is absent on this machine")
    monkeypatch.setenv("ZEROSIAM_DATA_DIR", str(DATA_DIR))
    result = compare.main(["--config", str(REPO / "configs" / "paper_suite_llama3.1_8b.yaml"), "--dry_run", "true"])
    assert result["model"]["name_or_path"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert {key: plan["problems"] for key, plan in result["plan"].items()} == {
        "math500": 500,
        "college_math": 2818,
        "aime24": 30,
        "minerva_math": 272,
    }
    assert all(plan["checker"] == "math" for plan in result["plan"].values())
    assert result["runs"] == 4 * 4 * 3
    assert "dry run: nothing was run" in capsys.readouterr().out


def test_an_interrupted_comparison_goes_on_from_its_finished_runs_and_checkpoints(
    tiny_model_dir, problems_file, tmp_path, monkeypatch
):
    output_dir, staging = tmp_path / "cmp", tmp_path / "cmp.partial"
    argv = compare_argv(tiny_model_dir, problems_file, output_dir, "--methods", "zerosiam")
    started, real_run = [], pipeline.adapt

    class Stop(Exception):
        pass

    def recording_run(model_args, data_args, output_args, args, **kwargs):
        started.append((args.seed, args.resume_from_checkpoint))
        if args.seed == 1:
            raise Stop
        return real_run(model_args, data_args, output_args, args, **kwargs)

    monkeypatch.setattr(pipeline, "adapt", recording_run)
    with pytest.raises(Stop):
        compare.main(argv)
    assert started == [(0, None), (1, None)]
    assert not output_dir.exists() and (staging / "runs" / "zerosiam-seed0" / "run.json").is_file()
    checkpoint = staging / "runs" / "zerosiam-seed1.partial" / "checkpoint-1"  # as a stopped run leaves it
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint / RUN_STATE_FILE).write_text("{}")
    started.clear()
    with pytest.raises(Stop):
        compare.main(argv)
    assert started == [(1, "true")]  # seed 0 read back, seed 1 resumed


@pytest.mark.parametrize("case", ["comparison_files_with_overwrite", "notes", "working_folder"])
def test_compare_refuses_a_folder_it_did_not_write_and_writes_nothing(
    capsys, tiny_model_dir, problems_file, tmp_path, monkeypatch, case
):
    user = tmp_path / "user"
    user.mkdir()
    extra = []
    if case == "comparison_files_with_overwrite":
        output_dir, extra, expected = user, ["--overwrite", "true"], "a run never deletes what it did not write"
        files = {"comparison.md": "my table", "comparison.json": "{}", "collapse_entropy.png": "my plot"}
    elif case == "notes":
        output_dir, expected = user / "paper2", "a run never deletes what it did not write"
        files = {"paper2/draft.tex": "my paper"}
    else:
        monkeypatch.chdir(user)
        output_dir, expected = ".", "--output_dir . names no folder of its own"
        files = {"README.md": "my repository"}
    for name, text in files.items():
        (user / name).parent.mkdir(exist_ok=True)
        (user / name).write_text(text)
    argv = compare_argv(tiny_model_dir, problems_file, output_dir, "--methods", "none", *extra)
    line = assert_usage_error(capsys, partial(compare.main, argv), expected)
    assert line.startswith(f"error: --output_dir {output_dir}")
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()} - {"problems.jsonl"}
    assert written == {f"user/{name}" for name in files}
    assert all((user / name).read_text() == text for name, text in files.items())


def test_a_rerun_that_fails_partway_leaves_the_published_comparison_as_it_was(
    capsys, tiny_model_dir, problems_file, tmp_path, monkeypatch
):
    output_dir = tmp_path / "cmp"
    argv = compare_argv(tiny_model_dir, problems_file, output_dir, "--methods", "none")
    compare.main(argv)
    published = {p: p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}
    started, real_run = [], pipeline.adapt

    def failing_second_run(*args, **kwargs):
        started.append(args)
        if len(started) == 2:
            raise ValueError("--dataset: refused")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(pipeline, "adapt", failing_second_run)
    rerun = [*argv, "--max_new_tokens", "3", "--overwrite", "true"]  # other settings: every run is redone
    assert_usage_error(capsys, partial(compare.main, rerun), "--dataset: refused")
    assert len(started) == 2
    assert {p: p.read_bytes() for p in output_dir.rglob("*") if p.is_file()} == published


def test_a_comparison_that_cannot_write_its_tables_keeps_its_runs(
    capsys, tiny_model_dir, problems_file, tmp_path, monkeypatch
):
    output_dir, staging = tmp_path / "cmp", tmp_path / "cmp.partial"
    argv = compare_argv(tiny_model_dir, problems_file, output_dir, "--methods", "none", "--seeds", "0")

    def full_disk(records, folder):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "collapse_entropy.png"))

    monkeypatch.setattr(comparison, "plot", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        compare.main(argv)
    (line,) = capsys.readouterr().err.splitlines()[-1:]
    assert exit_info.value.code == 1 and "(No space left on device); the runs it finished are kept in" in line
    assert (staging / "runs" / "none-seed0" / "run.json").is_file() and not output_dir.exists()
    monkeypatch.undo()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was redone")

    monkeypatch.setattr(pipeline, "adapt", refuse)
    compare.main(argv)
    assert (output_dir / "comparison.md").is_file() and not staging.exists()


def test_a_full_disk_during_a_later_run_keeps_the_runs_finished_before_it(
    capsys, tiny_model_dir, problems_file, tmp_path, monkeypatch
):
    """The staging folder of a comparison holds no checkpoint of its own, only its runs': a run that fails on a full
    disk stops the comparison with one line and keeps the runs finished before it, to be reused."""
    output_dir, staging = tmp_path / "cmp", tmp_path / "cmp.partial"
    argv = compare_argv(tiny_model_dir, problems_file, output_dir, "--methods", "none", "--seeds", "0", "1")
    adapt_or_reuse = comparison.adapt_or_reuse

    def full_disk_on_seed_1(model_args, data_args, output_args, args):
        if args.output_dir.endswith("seed1"):
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(args.output_dir) / "run.json"))
        return adapt_or_reuse(model_args, data_args, output_args, args)

    monkeypatch.setattr(comparison, "adapt_or_reuse", full_disk_on_seed_1)
    with pytest.raises(SystemExit) as exit_info:
        compare.main(argv)
    (line,) = capsys.readouterr().err.splitlines()[-1:]
    assert exit_info.value.code == 1 and f"the runs it finished are kept in {staging}" in line
    assert (staging / "runs" / "none-seed0" / "run.json").is_file() and not output_dir.exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(["--seeds", "0", "0"], "--seeds names 0 twice"), (["--methods", "tent", "tent"], "--methods names tent twice")],
)
def test_compare_refuses_a_duplicated_seed_or_method(capsys, tiny_model_dir, problems_file, tmp_path, flags, expected):
    argv = compare_argv(tiny_model_dir, problems_file, tmp_path / "cmp", *flags)
    assert_usage_error(capsys, partial(compare.main, argv), expected)
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "cmp.partial").exists()


def test_a_finished_run_is_not_reused_once_its_data_file_changed(tiny_model_dir, problems_file, tmp_path):
    data = tmp_path / "q.jsonl"
    write_problems(data, [{"question": q, "answer": a} for q, a in PROBLEMS])
    argv = compare_argv(tiny_model_dir, str(data), tmp_path / "cmp", "--methods", "none", "--seeds", "0")
    assert compare.main(argv)["rows"][0]["n"] == 6
    write_problems(data, [{"question": q, "answer": a} for q, a in PROBLEMS[:4]])
    assert compare.main(argv)["rows"][0]["n"] == 4  # reused, it said 6


def test_a_finished_run_of_dtype_auto_is_not_reused_where_auto_loads_another_dtype(
    tiny_model_dir, problems_file, tmp_path, monkeypatch
):
    argv = compare_argv(tiny_model_dir, problems_file, tmp_path / "cmp", "--methods", "none", "--seeds", "0")
    monkeypatch.setattr(modeling, "auto_dtype", lambda use_cpu=False: torch.float32)  # a CPU without bf16 units
    first = compare.main(argv)["rows"][0]
    assert compare.main(argv)["rows"][0] == first  # reused where auto still loads float32
    record = tmp_path / "cmp" / "runs" / "none-seed0" / "run.json"
    assert json.loads(record.read_text())["model"]["dtype"] == "float32"
    # the same command where bf16 is native
    monkeypatch.setattr(modeling, "auto_dtype", lambda use_cpu=False: torch.bfloat16)
    compare.main(argv)
    assert json.loads(record.read_text())["model"]["dtype"] == "bfloat16"


def test_dtype_auto_asks_the_cpu_when_the_runs_compute_on_it(tiny_model_dir, problems_file, tmp_path, monkeypatch):
    """With --use_cpu true on a machine with a GPU, auto loads what the CPU computes fastest, not the GPU's bf16:
    every question of the dtype (the reuse check and the load) says the run is on the CPU."""
    asked = []
    monkeypatch.setattr(modeling, "auto_dtype", lambda use_cpu=False: asked.append(use_cpu) or torch.float32)
    compare.main(compare_argv(tiny_model_dir, problems_file, tmp_path / "cmp", "--methods", "none", "--seeds", "0"))
    assert asked and all(asked)


def test_a_run_refused_partway_leaves_nothing_and_its_advice_then_works(
    capsys, tiny_model_dir, problems_file, tmp_path
):
    """A comparison's first run refused its lengths after the comparison's staging folder was made: the folder
    stayed, and the corrected command was refused as an interrupted run of other settings."""
    output_dir = tmp_path / "cmp"
    argv = compare_argv(tiny_model_dir, problems_file, output_dir, "--methods", "none", "--seeds", "0")
    assert_usage_error(capsys, partial(compare.main, [*argv, "--max_new_tokens", "2000"]), "lower --max_new_tokens to")
    assert not output_dir.exists() and not output_dir.with_name("cmp.partial").exists()
    compare.main([*argv, "--max_new_tokens", "512"])
    assert (output_dir / "comparison.json").is_file()


def test_a_method_added_to_a_published_comparison_runs_that_method_only(
    tiny_model_dir, problems_file, tmp_path, monkeypatch
):
    output_dir = tmp_path / "cmp"
    argv = compare_argv(tiny_model_dir, problems_file, output_dir, "--seeds", "0")
    compare.main([*argv, "--methods", "none"])
    made = []
    adapt = pipeline.adapt

    def recording(model_args, data_args, output_args, args, **kwargs):
        made.append(args.method)
        return adapt(model_args, data_args, output_args, args, **kwargs)

    monkeypatch.setattr(pipeline, "adapt", recording)
    result = compare.main([*argv, "--methods", "none", "tent", "--overwrite", "true"])
    assert made == ["tent"] and [row["method"] for row in result["rows"]] == ["none", "tent"]


def test_a_run_of_a_published_comparison_cannot_be_replaced_by_adapt(capsys, tiny_model_dir, problems_file, tmp_path):
    output_dir = tmp_path / "cmp"
    compare.main(compare_argv(tiny_model_dir, problems_file, output_dir, "--methods", "none", "--seeds", "0"))
    run = output_dir / "runs" / "none-seed0"
    before = (run / "run.json").read_bytes()
    argv = [*adapt_argv(tiny_model_dir, problems_file, run), "--method", "tent", "--overwrite", "true"]
    assert_usage_error(capsys, partial(adapt.main, argv), f"is part of {output_dir}, which a command of this project")
    assert (run / "run.json").read_bytes() == before and not run.with_name("none-seed0.partial").exists()


def test_compare_refuses_two_datasets_that_would_share_a_column(capsys, tiny_model_dir, problems_file, tmp_path):
    """Two files of one name in two folders, or one file spelled two ways, made one column and ran once."""
    (tmp_path / "elsewhere").mkdir()
    other = write_problems(tmp_path / "elsewhere" / Path(problems_file).name, [{"question": "1+1?", "answer": "2"}])
    for second in (other, os.path.relpath(problems_file)):
        argv = compare_argv(tiny_model_dir, problems_file, tmp_path / "cmp", "--datasets", problems_file, second)
        assert_usage_error(capsys, partial(compare.main, argv), "would share the column and runs folder 'problems'")
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "cmp.partial").exists()


def test_compare_refuses_a_negative_seed_before_writing_anything(capsys, tiny_model_dir, problems_file, tmp_path):
    argv = compare_argv(tiny_model_dir, problems_file, tmp_path / "cmp", "--seeds", "-1", "--synthetic_preset", "base")
    assert_usage_error(capsys, partial(compare.main, argv), "--seeds must be integers in [0, 2**32 - 1], got -1.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["problems.jsonl"]


def test_a_run_made_in_the_staging_folder_matches_the_same_run_published_or_published_before_staging():
    """A comparison makes its runs and problem files in <output_dir>.partial: the paths there name the published
    files, so the runs of a comparison published before compare staged (results/) are read back, not redone."""
    made_in_staging = {"DataArguments": {"dataset": "results/cmp.partial/synthetic-base-seed0.jsonl"}}
    published = {"DataArguments": {"dataset": "results/cmp/synthetic-base-seed0.jsonl"}}
    assert records.settings_identity(made_in_staging) == records.settings_identity(published)
    other = {"DataArguments": {"dataset": "results/cmp.partials/synthetic-base-seed0.jsonl"}}
    assert records.changed_settings(other, published) == ["--dataset"]


def test_a_cost_a_run_did_not_count_reads_n_a_and_the_other_costs_stay():
    def run(generated: int, prefill: int | None) -> dict:
        cost = {"generated_tokens": generated, "trained_tokens": 0, "forward_tokens": 0, "problems": 2}
        if prefill is not None:
            cost["prefill_tokens"] = prefill
        return {
            "results": {"cost": cost},
            "timings": {"adapt_seconds": 4.0},
            "config": {"ZeroSiamConfig": {"ablation": None}},
        }

    rows = {row["method"]: row for row in comparison.cost_rows({"none": [run(8, 6)], "ttrl": [run(32, None)]})}
    assert rows["ttrl"]["per_problem"]["prefill_tokens"] is None and rows["ttrl"]["relative"]["prefill_tokens"] is None
    assert rows["ttrl"]["per_problem"]["generated_tokens"] == 16 and rows["ttrl"]["relative"]["generated_tokens"] == 4
    ttrl_line = next(line for line in comparison.cost_table(list(rows.values())).splitlines() if "ttrl" in line)
    assert ttrl_line.split(" | ")[1:3] == ["16 (4.00x)", "n/a"]
