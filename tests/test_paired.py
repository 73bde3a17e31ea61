"""scripts/paired.py: two conditions' runs paired by method, seed and problem, on hand-made run folders."""

import json

import pytest

from zerosiam_hf.commands import paired
from zerosiam_hf.records import write_jsonl
from zerosiam_hf.significance import bootstrap_interval


DATA = {"source": "file", "path": "/a/p.jsonl", "sha256": "abc", "split": "test", "rows": 4, "selected": 4}


def make_run(folder, method, seed, flexible, strict=None, data=None):
    run = folder / f"{method}-seed{seed}"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"data": {**DATA, **(data or {})}}))
    strict = flexible if strict is None else strict
    # written out of problem order: the pairing is by index, not by line
    rows = [{"index": i, "correct_flexible": f, "correct_strict": s} for i, (f, s) in enumerate(zip(flexible, strict))]
    write_jsonl(run / "predictions.jsonl", rows[::-1])


def test_the_difference_is_after_minus_before_problem_by_problem(tmp_path, capsys):
    make_run(tmp_path / "plain" / "runs", "tent", 0, [1, 0, 0, 0])
    make_run(tmp_path / "guard", "tent", 0, [1, 1, 1, 0], strict=[0, 0, 0, 0])
    make_run(tmp_path / "guard", "none", 0, [0, 0, 0, 0])  # in one folder only: not paired

    written = tmp_path / "paired.json"
    argv = ["--before", str(tmp_path / "plain"), "--after", str(tmp_path / "guard"), "--output_json", str(written)]
    rows = paired.main(argv)
    assert json.loads(written.read_text())["rows"] == rows

    strict, flexible = rows
    assert (flexible["method"], flexible["accuracy"], flexible["seeds"]) == ("tent", "flexible", [0])
    assert (flexible["before"], flexible["after"], flexible["difference"]) == (25.0, 75.0, 50.0)
    # two problems won, none lost: the exact sign test's two-sided p is 2 * (1/2)^2
    assert (flexible["wins"], flexible["losses"], flexible["p"]) == (2, 0, 0.5)
    low, high = bootstrap_interval([[0, 1, 1, 0]], same_problems=True)
    assert flexible["ci"] == [100 * low, 100 * high] and flexible["resolved"] == (low > 0)
    assert (strict["difference"], strict["wins"], strict["losses"]) == (-25.0, 0, 1)
    out = capsys.readouterr().out
    assert "| method | accuracy | plain % | guard % |" in out
    assert "| tent | flexible | 25.00 | 75.00 | +50.00 |" in out


def test_a_noised_run_pairs_with_the_clean_one_and_other_problems_are_refused(tmp_path, capsys):
    make_run(tmp_path / "clean", "none", 0, [1, 0, 0, 0])
    make_run(tmp_path / "noised", "none", 0, [0, 0, 0, 0], data={"noise": {"kind": "typos", "severity": 3, "seed": 0}})
    make_run(tmp_path / "other", "none", 0, [0, 0, 0, 0], data={"sha256": "def"})
    assert (
        paired.main(["--before", str(tmp_path / "clean"), "--after", str(tmp_path / "noised")])[1]["difference"] == -25
    )

    with pytest.raises(SystemExit):
        paired.main(["--before", str(tmp_path / "clean"), "--after", str(tmp_path / "other")])
    assert "answered other problems" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--before", "{tmp}/missing", "--after", "{tmp}/b"], "no such folder"),
        (["--before", "{tmp}/scenario", "--after", "{tmp}/b"], "it holds cells (iid): name one"),
        (["--before", "{tmp}/b", "--after", "{tmp}/b", "--methods", "tent"], "--methods tent: not in both folders"),
        (["--before", "{tmp}/b", "--after", "{tmp}/b", "--labels", "x"], "--labels takes two names"),
        (["--before", "{tmp}/b", "--after", "{tmp}/seed1"], "none: the two folders share no seed"),
    ],
)
def test_bad_folders_and_flags_are_one_line(tmp_path, capsys, argv, message):
    make_run(tmp_path / "b", "none", 0, [1, 0, 0, 0])
    make_run(tmp_path / "seed1", "none", 1, [1, 0, 0, 0])
    make_run(tmp_path / "scenario" / "runs" / "iid", "none", 0, [1, 0, 0, 0])
    with pytest.raises(SystemExit):
        paired.main([arg.format(tmp=tmp_path) for arg in argv])
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
