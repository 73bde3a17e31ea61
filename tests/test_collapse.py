"""Tests for the collapse steps (zerosiam_hf/collapse.py) and their place in a comparison's tables, JSON and plots."""

import json

import pytest
from test_compare import compare_argv

from zerosiam_hf import collapse, comparison, pipeline
from zerosiam_hf.commands import compare
from zerosiam_hf.guards import recent_degenerate_share


def stream(correct: list[int], batch: int = 1, indices: list[int] | None = None) -> list[dict]:
    """Answers as predictions.jsonl holds them: `batch` answers per update, in stream order."""
    indices = indices if indices is not None else list(range(len(correct)))
    return [
        {"index": index, "updates_before": position // batch, "correct_flexible": bool(right)}
        for position, (index, right) in enumerate(zip(indices, correct))
    ]


def baseline(correct: list[int]) -> dict[int, int]:
    return dict(enumerate(correct))


NONE = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]


def test_a_run_that_dips_and_recovers_has_not_collapsed():
    dipped = [1, 0, 0, 0, 0, 0, 1, 0, 1, 0]  # below none's at updates 2 to 5 (window 2), as good from 6 on
    assert collapse.accuracy_collapse_step(stream(dipped), baseline(NONE), window=2) is None


def test_a_run_below_none_from_an_update_to_the_end_collapsed_at_that_update():
    broken = [1, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    # windows of 2 (updates 0 to 9): 1/1 = 1/1, 1/2 = 1/2, 1/2 = 1/2, 1/2 = 1/2, then 0 against 1/2 from update 4 on
    assert collapse.accuracy_collapse_step(stream(broken), baseline(NONE), window=2) == 4
    # wider windows still hold the method's last right answer at update 4, but none's is right there too
    assert collapse.accuracy_collapse_step(stream(broken), baseline(NONE), window=4) == 4
    assert collapse.accuracy_collapse_step(stream(broken), baseline(NONE), window=10) == 4


def test_ties_with_none_are_not_below():
    assert collapse.accuracy_collapse_step(stream(NONE), baseline(NONE), window=3) is None
    # right on other problems than none, as many in every full window of 2: not below from update 1 on
    shifted = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    assert collapse.accuracy_collapse_step(stream(shifted), baseline(NONE), window=2) is None
    # the same but wrong on the last problem: below at the last update alone
    assert collapse.accuracy_collapse_step(stream(shifted[:-1] + [0]), baseline(NONE), window=2) == 9


def test_the_window_counts_answers_and_a_step_is_the_updates_before_a_batch():
    # batches of 2: updates 0 to 4; wrong from the 7th answer (update 3) on, where none is right on index 6 and 8
    broken = [1, 0, 1, 0, 1, 0, 0, 0, 0, 0]
    assert collapse.accuracy_collapse_step(stream(broken, batch=2), baseline(NONE), window=2) == 3
    # a window of 3 answers across the batches: answers 1-3 after update 1, 3-5 after update 2
    assert collapse.running_accuracy(stream(broken, batch=2), window=3) == [
        (0, 50.0),
        (1, 100 / 3),
        (2, 100 / 3),
        (3, 0.0),
        (4, 0.0),
    ]


def test_the_answers_pair_with_nones_by_problem_not_by_position():
    # none was right on problems 0-4; the method met the problems in reverse and was right on 5-9 alone. By
    # position the two would tie everywhere; by problem the method is below from its window on problems 4 and 3.
    order = list(range(10))[::-1]
    right_late = [int(index >= 5) for index in order]
    assert collapse.accuracy_collapse_step(stream(right_late, indices=order), baseline([1] * 5 + [0] * 5), 2) == 6


def record(history: list[dict], **settings) -> dict:
    return {"config": {"ZeroSiamConfig": {"seed": 0, "ablation": None, **settings}}, "log_history": history}


THRESHOLDS = {"collapse_min_entropy": 0.1, "collapse_max_degenerate": 0.5}


def test_the_diagnostic_step_is_the_first_the_guard_would_reset_at():
    history = [
        {"step": 1, "collapse/entropy": 0.9, "answers/degenerate": 0.25},
        {"step": 2, "collapse/entropy": 0.1, "answers/degenerate": 0.5},  # at both thresholds: not past them
        {"step": 3, "collapse/entropy": 0.05, "answers/degenerate": 0.0},
        {"step": 4, "collapse/entropy": 0.5, "answers/degenerate": 0.0},
    ]
    assert collapse.diagnostic_collapse_step(record(history, **THRESHOLDS)) == 3
    assert collapse.diagnostic_collapse_step(record(history, **{**THRESHOLDS, "collapse_max_degenerate": 0.4})) == 2
    # the degenerate share alone (none logs no entropy)
    answers_only = [{"step": s, "answers/degenerate": share} for s, share in ((1, 0.0), (2, 0.75))]
    assert collapse.diagnostic_collapse_step(record(answers_only, **THRESHOLDS)) == 2


def test_the_degenerate_share_is_read_over_the_fewest_last_steps_that_hold_enough_answers():
    steps = [(1.0, 1), (0.0, 1), (0.5, 2), (1.0, 1)]
    assert recent_degenerate_share(steps[:1], 2) is None  # one answer is too few
    assert recent_degenerate_share(steps, 1) == 1.0  # the last step alone
    assert recent_degenerate_share(steps, 3) == 2 / 3  # the last two steps: 1 + 1 of 3 answers
    assert recent_degenerate_share(steps, 4) == 2 / 4  # three steps: no answer of the second is degenerate
    assert recent_degenerate_share(steps, 6) is None


def test_at_batch_size_1_the_diagnostic_step_needs_more_than_one_degenerate_answer():
    # one answer a step: the degenerate answer of step 2 alone is a share of 1 of 1; the guard's window of 4 answers
    # first judges at step 4 (2 of 4, not above 0.5) and first crosses at step 7 (3 of the last 4)
    shares = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    history = [{"step": s, "answers/degenerate": share} for s, share in enumerate(shares, 1)]
    batch1 = record(history, **THRESHOLDS, per_device_train_batch_size=1)
    assert collapse.diagnostic_collapse_step(batch1) == 7
    each_alone = record(history, **THRESHOLDS, per_device_train_batch_size=1, collapse_min_answers=1)
    assert collapse.diagnostic_collapse_step(each_alone) == 2
    # a run before the option with the guard on read each step alone, as its guard did
    assert (
        collapse.diagnostic_collapse_step(
            record(history, **THRESHOLDS, per_device_train_batch_size=1, collapse_guard=True)
        )
        == 2
    )


@pytest.mark.parametrize(
    ("settings", "step"),
    [
        ({}, None),  # one answer a step: the last 4 answers hold 2 degenerate, not above half
        ({"num_processes": 2}, 5),  # two answers a step: the last two steps hold 4 of 4
        ({"logging_steps": 2}, 5),  # each entry the mean of two steps of one answer
        ({"gradient_accumulation_steps": 2}, 5),
    ],
)
def test_the_answers_behind_a_logged_step_are_prompts_per_update_over_processes_and_logged_steps(settings, step):
    history = [{"step": s, "answers/degenerate": share} for s, share in enumerate([0.0, 0.0, 0.0, 1.0, 1.0], 1)]
    processes = settings.pop("num_processes", 1)
    run = record(history, **THRESHOLDS, per_device_train_batch_size=1, **settings)
    assert collapse.diagnostic_collapse_step({**run, "num_processes": processes}) == step


def test_a_run_without_the_diagnostics_has_no_diagnostic_step():
    assert collapse.diagnostic_collapse_step(record([{"step": 1, "loss": 0.3}], **THRESHOLDS)) is None
    assert collapse.diagnostic_collapse_step(record([], **THRESHOLDS)) is None


def test_a_run_recorded_before_the_guard_thresholds_takes_their_defaults():
    assert collapse.guard_thresholds(record([])) == {"collapse/entropy": 0.1, "answers/degenerate": 0.5}
    assert collapse.diagnostic_collapse_step(record([{"step": 7, "collapse/entropy": 0.09}])) == 7


def test_collapse_rows_count_each_criterion_and_say_n_a_without_none():
    def run(seed, degenerate):
        history = [{"step": s + 1, "answers/degenerate": share} for s, share in enumerate(degenerate)]
        return {**record(history, seed=seed), "data": {"path": "p.jsonl", "sha256": f"seed{seed}"}}

    records = {"synthetic": {"none": [run(0, [0.0] * 5), run(1, [0.0] * 5)]}}
    records["synthetic"]["tent"] = [run(0, [0.0, 0.0, 1.0, 1.0, 1.0]), run(1, [0.0] * 5)]
    none_answers = [1, 1, 1, 1, 1]
    streams = {
        "synthetic": {"none": [stream(none_answers)] * 2, "tent": [stream([1, 0, 0, 0, 0]), stream(none_answers)]}
    }
    rows = {row["method"]: row for row in comparison.collapse_rows(records, streams, window=2)}
    assert rows["tent"]["runs"] == [
        {"seed": 0, "accuracy_step": 1, "diagnostic_step": 3},
        {"seed": 1, "accuracy_step": None, "diagnostic_step": None},
    ]
    assert rows["tent"]["accuracy_collapsed"] == 1 and rows["tent"]["accuracy_median_step"] == 1
    assert rows["tent"]["diagnostic_collapsed"] == 1 and rows["tent"]["window"] == 2
    assert rows["none"]["accuracy_collapsed"] is None and rows["none"]["diagnostic_collapsed"] == 0
    table = comparison.collapse_table(list(rows.values()), suite=False).splitlines()
    assert table[2] == "| none | n/a |  | 0/2 | never, never |"
    assert table[3] == "| tent | 1/2 | 1, never | 1/2 | 3, never |"
    # without none, or with none on other problems, no accuracy step
    alone = comparison.collapse_rows({"synthetic": {"tent": records["synthetic"]["tent"]}}, streams, window=2)
    assert alone[0]["accuracy_collapsed"] is None and alone[0]["runs"][0]["accuracy_step"] is None
    records["synthetic"]["none"] = [run(2, [0.0] * 5), run(3, [0.0] * 5)]
    assert comparison.collapse_rows(records, streams, window=2)[1]["accuracy_collapsed"] is None


def test_a_comparison_reports_each_runs_collapse_steps_in_its_tables_json_and_plots(
    tiny_model_dir, problems_file, tmp_path, monkeypatch
):
    output_dir = tmp_path / "cmp"
    # a threshold no entropy is below: every zerosiam run shows collapse at its first step (none logs no entropy)
    argv = compare_argv(tiny_model_dir, problems_file, output_dir, "--collapse_window", "2")
    result = compare.main([*argv, "--collapse_min_entropy", "100"])

    runs = output_dir / "runs"
    answers = {
        (method, seed): [json.loads(line) for line in (runs / f"{method}-seed{seed}" / "predictions.jsonl").open()]
        for method in ("none", "zerosiam")
        for seed in (0, 1)
    }
    # every method meets the same stream on a seed: the trainer's shuffle is seeded by --seed alone
    for seed in (0, 1):
        assert [a["index"] for a in answers["none", seed]] == [a["index"] for a in answers["zerosiam", seed]]
    written = json.loads((output_dir / "comparison.json").read_text())
    assert written["collapse"] == result["collapse"]
    rows = {row["method"]: row for row in result["collapse"]}
    for seed, steps in enumerate(rows["zerosiam"]["runs"]):
        none_scores = {a["index"]: a["correct_flexible"] for a in answers["none", seed]}
        record = json.loads((runs / f"zerosiam-seed{seed}" / "run.json").read_text())
        assert steps == {
            "seed": seed,
            "accuracy_step": collapse.accuracy_collapse_step(answers["zerosiam", seed], none_scores, 2),
            "diagnostic_step": collapse.diagnostic_collapse_step(record),
        }
    assert rows["zerosiam"]["diagnostic_collapsed"] == 2 and rows["zerosiam"]["diagnostic_median_step"] == 1
    assert rows["none"]["accuracy_collapsed"] is None and rows["zerosiam"]["window"] == 2
    table = (output_dir / "comparison.md").read_text()
    assert "flexible accuracy of the last 2 answers" in table
    assert "| zerosiam | " + f"{rows['zerosiam']['accuracy_collapsed']}/2 | " in table
    for name in ("running_accuracy.png", "guard_entropy.png", "guard_degenerate.png"):
        assert name in written["plots"] and (output_dir / name).read_bytes().startswith(b"\x89PNG")

    # another window reads the same runs again: it is not part of what the comparison computed
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was redone")

    monkeypatch.setattr(pipeline, "adapt", refuse)
    argv[argv.index("--collapse_window") + 1] = "3"
    again = compare.main([*argv, "--collapse_min_entropy", "100"])
    assert again["rows"] == result["rows"] and {row["window"] for row in again["collapse"]} == {3}


def test_compare_refuses_an_empty_collapse_window(capsys, tiny_model_dir, problems_file, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        compare.main(compare_argv(tiny_model_dir, problems_file, tmp_path / "cmp", "--collapse_window", "0"))
    assert exit_info.value.code == 2
    assert "--collapse_window must be a number of answers >= 1, got 0." in capsys.readouterr().err
