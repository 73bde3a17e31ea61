"""Defects a probe found in input checks and in the math checker, one test each: golds no answer can match, length
advice that fails when followed, a dead math worker taken for a wrong answer, an unwritable cache taken for an
unreadable file, and minor flags (a huge --slot_lr, --split with a file, a negative --seed, 0-based row numbers)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from functools import partial

import pytest
from helpers import PROBLEMS, REPO, adapt_argv, assert_usage_error, subprocess_env, write_problems

from zerosiam_hf import checkers, generation, pipeline
from zerosiam_hf.checkers import MathChecker, NumericChecker
from zerosiam_hf.commands import adapt
from zerosiam_hf.data import DataArguments, load_problems
from zerosiam_hf.errors import RunStopped


ROWS = [{"question": q, "answer": a} for q, a in PROBLEMS]


def no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the bad input was reported")


def test_numeric_golds_that_no_answer_can_match_are_refused_with_their_line(
    capsys, monkeypatch, tiny_model_dir, tmp_path
):
    # A blank line before the bad row: the message counts the file's lines, not the rows datasets returns.
    path = tmp_path / "gsm.jsonl"
    for gold in ("1e400", "1/2", "1_000", "+5", "$-5"):
        lines = [json.dumps(row) for row in ROWS[:2]] + ["", json.dumps({"question": "q", "answer": f"#### {gold}"})]
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(ValueError) as error:
            load_problems(DataArguments(dataset=str(path)))
        assert str(error.value) == (
            f"--dataset {path}: line 4: gold answer {gold!r} is a number in a form no answer can match: the numeric "
            "checker reads decimals such as 1,234.5, -3, .5 or $12; write it so, or use --checker math for "
            "fractions, exponents and other forms."
        )
    # .5 is read in golds and in answers alike, so the answer that repeats the gold is right, strict and flexible.
    path.write_text("".join(json.dumps(row) + "\n" for row in [*ROWS[:2], {"question": "q", "answer": "#### .5"}]))
    problems, _ = load_problems(DataArguments(dataset=str(path)))
    checker = NumericChecker()
    gold = checker.parse_gold(problems["answer"][2])
    for text in ("#### .5", "The answer is .5", "half a cup, so .5"):
        assert checker.score([text], [gold])[0]["correct_flexible"]
    assert checker.score(["#### .5"], [gold])[0]["correct_strict"]
    # The command says it in one line, before any model loads.
    monkeypatch.setattr(pipeline, "load_model_and_tokenizer", no_model)
    bad = write_problems(tmp_path / "bad.jsonl", [*ROWS[:1], {"question": "q", "answer": "#### 1/2"}])
    call = partial(adapt.main, adapt_argv(tiny_model_dir, bad, tmp_path / "run"))
    assert_usage_error(capsys, call, f"--dataset {bad}: line 2: gold answer '1/2' is a number in a form no answer")


@pytest.mark.parametrize(("prompt", "new"), [(512, 2000), (512, 1000), (5000, 4), (2000, 2000), (1024, 1024)])
def test_the_length_advice_fits_when_followed(prompt, new):
    with pytest.raises(ValueError) as error:
        generation.check_lengths(prompt, new, context=1024, model="tiny")
    message = str(error.value)
    assert message.startswith(f"--model tiny holds 1024 positions, but --max_prompt_length {prompt} + ")
    fixes = message.split("do not fit; ")[1].rstrip(".").split(" or ")
    for fix in fixes:  # each way out, followed alone, fits
        lengths = {"max_prompt_length": prompt, "max_new_tokens": new}
        lengths.update({flag: int(v) for flag, v in re.findall(r"--(max_\w+) (?:to )?(\d+)", fix)})
        assert lengths != {"max_prompt_length": prompt, "max_new_tokens": new}, fix
        generation.check_lengths(**lengths, context=1024, model="tiny")


def test_a_dead_math_worker_is_reported_as_dead_and_never_scores_an_answer(monkeypatch):
    real_popen, real_read = subprocess.Popen, checkers._read_line

    def killed_at_start(*args, **kwargs):
        process = real_popen(*args, **kwargs)
        os.kill(process.pid, signal.SIGKILL)
        return process

    checker = MathChecker(timeout=20.0)
    monkeypatch.setattr(checkers.subprocess, "Popen", killed_at_start)
    start = time.monotonic()
    with pytest.raises(RunStopped, match=r"checker's process was killed by SIGKILL before it was ready; check that"):
        checker.score(["$\\boxed{2}$"], ["2"])
    assert time.monotonic() - start < 60  # said at once, not after the start-up limit
    monkeypatch.setattr(checkers.subprocess, "Popen", real_popen)

    kills = []

    def killed_mid_check(process, timeout):
        if timeout == checker.timeout and len(kills) < kill_count:  # a check's read, not the start-up's
            os.kill(process.pid, signal.SIGKILL)
            kills.append(process.pid)
        return real_read(process, timeout)

    monkeypatch.setattr(checkers, "_read_line", killed_mid_check)
    kill_count = 1  # one death: the check runs again on a fresh worker and the right answer scores right
    assert checker.score(["so \\boxed{\\frac{1}{2}}"], ["0.5"])[0]["correct_strict"]
    assert len(kills) == 1 and checker._worker.pid != kills[0]
    kills.clear()
    kill_count = 2  # two in a row: an error naming the signal, not a wrong answer
    with pytest.raises(RunStopped, match=r"checker's process was killed by SIGKILL during a check, twice in a row"):
        checker.score(["$\\boxed{2}$"], ["2"])
    checker.close()


def test_an_unwritable_home_cache_is_named_not_the_data_file(tmp_path):
    path = write_problems(tmp_path / "p.jsonl", ROWS)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").write_text("")  # a file where the cache folder goes: unwritable even for root
    env = {k: v for k, v in subprocess_env().items() if k not in ("HF_HOME", "HF_DATASETS_CACHE", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    code = (
        "import sys\nfrom zerosiam_hf.data import DataArguments, load_problems\n"
        "try:\n    print(len(load_problems(DataArguments(dataset=sys.argv[1]))[0]))\n"
        "except ValueError as error:\n    print(error)\n"
    )

    def run(env):
        result = subprocess.run(
            [sys.executable, "-c", code, path], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout.strip().splitlines()[-1]

    assert run(env) == (
        f"--dataset {path}: datasets keeps its copy of the data in {home}/.cache/huggingface/datasets, which cannot "
        "be written (Not a directory); point HF_DATASETS_CACHE (or HF_HOME) at a writable folder."
    )
    assert run({**env, "HF_DATASETS_CACHE": str(tmp_path / "cache")}) == str(len(ROWS))  # the advice, followed


@pytest.mark.parametrize(
    ("rows", "argv", "expected"),
    [
        (None, ["--method", "slot", "--slot_lr", "1e30"], "--slot_lr must be at most 1.0, got 1e+30: each step moves"),
        (None, ["--method", "slot", "--slot_lr", "0"], "--slot_lr must be > 0, got 0.0"),
        (None, ["--split", "train"], "--split train: --dataset {path} is one file, with no splits; drop --split"),
        (None, ["--seed", "-1"], "--seed must be an integer in [0, 2**32 - 1], got -1"),
        ([*ROWS[:2], {"question": "  ", "answer": "#### 1"}], [], "line 3: the question is empty; every row needs"),
        ([*ROWS[:1], {"question": "q", "answer": "seven"}], [], "line 2: gold answer has no '#### <number>' line"),
    ],
)
def test_minor_inputs_are_one_line_errors_that_name_the_flag_or_line(
    capsys, monkeypatch, tiny_model_dir, tmp_path, problems_file, rows, argv, expected
):
    monkeypatch.setattr(pipeline, "load_model_and_tokenizer", no_model)
    path = problems_file if rows is None else write_problems(tmp_path / "rows.jsonl", rows)
    output_dir = tmp_path / "run"
    call = partial(adapt.main, adapt_argv(tiny_model_dir, path, output_dir, *argv))
    assert_usage_error(capsys, call, expected.format(path=path))
    assert not output_dir.exists()
