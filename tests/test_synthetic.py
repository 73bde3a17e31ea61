"""Tests of the synthetic word-problem generator: determinism, exact answers, GSM8K format, knobs, validation, CLI."""

import dataclasses
import errno
import json
import os
import random
import re
from functools import partial

import pytest
from helpers import assert_usage_error

from zerosiam_hf import records
from zerosiam_hf.commands import make_synthetic
from zerosiam_hf.records import write_jsonl
from zerosiam_hf.synthetic import SHIFTS, SyntheticConfig, generate_problems, generate_records, number_to_words


ALL_OPS = SyntheticConfig(num_steps=4, operations="+-*/", num_distractors=2, max_value=50)


def gold(answer: str) -> int:
    """Parse the gold answer as GSM8K readers do: the text after '#### ', commas stripped."""
    return int(answer.split("#### ")[-1].replace(",", "").strip())


def sentences_with_numbers(question: str) -> int:
    """Count sentences that contain a digit."""
    return sum(bool(re.search(r"\d", s)) for s in re.split(r"(?<=[.?!])\s+", question))


def test_same_seed_gives_identical_problems_whatever_the_global_rng():
    random.seed(1)
    first = generate_problems(50, ALL_OPS)
    random.seed(2)
    random.random()
    assert generate_problems(50, ALL_OPS) == first


def test_different_seeds_give_different_problems():
    a = generate_problems(20, ALL_OPS)
    b = generate_problems(20, dataclasses.replace(ALL_OPS, seed=1))
    assert sum(x["question"] != y["question"] for x, y in zip(a, b)) >= 18


def test_problems_are_varied():
    rows = generate_problems(100, SyntheticConfig())
    assert len({r["question"] for r in rows}) == 100
    assert len({r["question"].split()[0] for r in rows}) >= 8  # many different names


@pytest.mark.parametrize("config", [SHIFTS[name] for name in SHIFTS] + [ALL_OPS], ids=[*SHIFTS, "all_ops"])
def test_every_answer_is_exact_and_in_gsm8k_format(config):
    for problem in generate_records(100, config):
        # Recompute from the structured record, independently of the generator.
        value = problem.start
        for op, k in problem.steps:
            if op == "/":
                assert value % k == 0, "division must be exact"
            value = {"+": value + k, "-": value - k, "*": value * k, "/": value // k}[op]
            assert value >= 1, "intermediate results stay positive"
        assert value == problem.result
        assert len(problem.steps) == config.num_steps
        # The worked solution's calculator annotations chain and evaluate to the same numbers.
        lines = problem.answer.split("\n")
        assert lines[-1] == f"#### {value}"
        assert gold(problem.answer) == value
        calls = re.findall(r"<<(\d+)([-+*/])(\d+)=(\d+)>>", problem.answer)
        assert [(op, int(k)) for _, op, k, _ in calls] == list(problem.steps)
        running = problem.start
        for a, op, k, b in calls:
            assert int(a) == running
            assert int(b) == {"+": int(a) + int(k), "-": int(a) - int(k), "*": int(a) * int(k)}.get(
                op, int(a) // int(k)
            )
            running = int(b)
        # The question states the start and every operand (digits, except in the 'words' phrasing).
        if config.phrasing != "words":
            numbers = [int(x) for x in re.findall(r"\d+", problem.question)]
            assert problem.start in numbers
            assert all(k in numbers for _, k in problem.steps)
        assert problem.as_row() == {"question": problem.question, "answer": problem.answer}


def test_more_distractors_add_sentences_with_numbers_but_keep_the_answer():
    base = generate_problems(50, SyntheticConfig(num_distractors=0))
    more = generate_problems(50, SyntheticConfig(num_distractors=3))
    for b, m in zip(base, more):
        assert sentences_with_numbers(m["question"]) == sentences_with_numbers(b["question"]) + 3
        assert m["answer"] == b["answer"]
        sentences = re.split(r"(?<=[.?!])\s+", m["question"])
        assert len(set(sentences)) == len(sentences), "no distractor is repeated"


@pytest.mark.parametrize("max_value", [2, 7, 30, 1000])
def test_max_value_bounds_every_operand(max_value):
    config = SyntheticConfig(max_value=max_value, operations="+-*/", num_steps=3, num_distractors=2)
    for problem in generate_records(100, config):
        assert 2 <= problem.start <= max_value
        assert all(1 <= k <= max_value for _, k in problem.steps)
        assert all(int(x) <= max_value for x in re.findall(r"\d+", problem.question))


def test_operations_knob_restricts_the_operations():
    for ops in ("+", "-", "*", "/", "*/", "+-*/"):
        config = SyntheticConfig(operations=ops, num_steps=2, max_value=100)
        used = {op for p in generate_records(100, config) for op, _ in p.steps}
        assert used == set(ops)


def test_verbose_phrasing_changes_the_text_but_not_the_answer():
    plain = generate_problems(50, SyntheticConfig(phrasing="plain", num_distractors=1))
    verbose = generate_problems(50, SyntheticConfig(phrasing="verbose", num_distractors=1))
    for p, v in zip(plain, verbose):
        assert v["question"] != p["question"]
        assert v["answer"] == p["answer"]
    assert sum(len(v["question"]) for v in verbose) > 1.5 * sum(len(p["question"]) for p in plain)


def test_words_phrasing_only_spells_out_the_numbers():
    config = SyntheticConfig(num_steps=2, operations="+-*/", max_value=200, num_distractors=2)
    plain = generate_problems(50, config)
    words = generate_problems(50, dataclasses.replace(config, phrasing="words"))
    for p, w in zip(plain, words):
        assert w["answer"] == p["answer"]
        assert not re.search(r"\d", w["question"])
        assert re.sub(r"\d+", lambda m: number_to_words(int(m.group())), p["question"]) == w["question"]


def test_number_to_words():
    assert [number_to_words(n) for n in (0, 7, 13, 40, 42, 100, 305, 1000, 12_019)] == [
        "zero",
        "seven",
        "thirteen",
        "forty",
        "forty-two",
        "one hundred",
        "three hundred five",
        "one thousand",
        "twelve thousand nineteen",
    ]
    assert number_to_words(1_000_000) == "one million"


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_steps", 0),
        ("num_steps", 9),
        ("max_value", 1),
        ("max_value", 10**7),
        ("num_distractors", -1),
        ("phrasing", "shouting"),
        ("operations", ""),
        ("operations", "+x"),
        ("operations", "++"),
    ],
)
def test_bad_knobs_raise_with_the_field_name_and_value(field, value):
    with pytest.raises(ValueError, match=rf"{field} must .*{re.escape(repr(value))}"):
        SyntheticConfig(**{field: value})


def test_shrinking_operations_need_room():
    with pytest.raises(ValueError, match=r"max_value must be at least 2\*\*num_steps=16"):
        SyntheticConfig(operations="-/", num_steps=4, max_value=10)
    assert len(generate_problems(20, SyntheticConfig(operations="-/", num_steps=4, max_value=16))) == 20


def test_config_is_frozen_and_presets_shift_one_knob():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SHIFTS["base"].num_steps = 3
    base = dataclasses.asdict(SHIFTS["base"])
    for name, config in SHIFTS.items():
        changed = {k for k, v in dataclasses.asdict(config).items() if v != base[k]}
        assert len(changed) == (0 if name == "base" else 1), name


def test_write_jsonl_is_atomic_and_loadable_by_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = generate_problems(10, SyntheticConfig())
    path = tmp_path / "sub" / "problems.jsonl"
    assert write_jsonl(path, rows) == str(path)
    assert [p.name for p in path.parent.iterdir()] == ["problems.jsonl"]  # no temporary file left behind
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    loaded = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.column_names == ["question", "answer"] and loaded[3] == rows[3]

    def failing_rows():
        yield rows[0]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl(path, failing_rows())
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows  # the old file survives
    assert [p.name for p in path.parent.iterdir()] == ["problems.jsonl"]


def test_cli_writes_the_preset_with_overrides(tmp_path):
    out = tmp_path / "verbose.jsonl"
    make_synthetic.main(["--output", str(out), "--n", "5", "--preset", "verbose", "--seed", "3"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == generate_problems(5, dataclasses.replace(SHIFTS["verbose"], seed=3))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num_steps", "0"], "num_steps must be"),
        (["--n", "abc"], "--n"),
        (["--preset", "nope"], "preset must"),
        (["--operations", "/", "--num_steps", "8", "--max_value", "256"], "could not draw a 8-step chain"),
    ],
)
def test_cli_bad_argument_gives_one_line_and_exit_code_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        make_synthetic.main(["--output", str(tmp_path / "x.jsonl"), *args])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert len(stderr.strip().splitlines()) == 1 and message in stderr
    assert not (tmp_path / "x.jsonl").exists()


NOTHING_WRITTEN = "nothing was written: free space on that disk or choose an --output you can write to."


def fail_second_write(monkeypatch, code: int) -> None:
    """Make `records.write_jsonl` fail with `code` halfway through its temporary file, as a full or read-only disk
    would."""
    real_open = open

    class Failing:
        def __init__(self, handle):
            self.handle, self.writes = handle, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text):
            self.writes += 1
            if self.writes == 2:
                raise OSError(code, os.strerror(code), self.handle.name)
            return self.handle.write(text)

    monkeypatch.setattr(records, "open", lambda *args, **kwargs: Failing(real_open(*args, **kwargs)), raising=False)


def test_cli_keeps_an_existing_output_unless_overwrite_and_replaces_it_whole(tmp_path, capsys, monkeypatch):
    out = tmp_path / "syn" / "mine.jsonl"
    out.parent.mkdir()
    out.write_text("my problems\n")
    argv = ["--output", str(out), "--n", "3"]
    assert_usage_error(
        capsys, partial(make_synthetic.main, argv), f"--output {out} exists; choose another file or pass --overwrite"
    )
    assert out.read_text() == "my problems\n"
    fail_second_write(monkeypatch, errno.ENOSPC)
    assert_usage_error(capsys, partial(make_synthetic.main, [*argv, "--overwrite", "true"]), "No space left")
    assert out.read_text() == "my problems\n" and [p.name for p in out.parent.iterdir()] == ["mine.jsonl"]
    monkeypatch.undo()
    make_synthetic.main([*argv, "--overwrite", "true"])
    assert [json.loads(line) for line in out.read_text().splitlines()] == generate_problems(3, SHIFTS["base"])


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("folder", "is a folder; name a file, e.g. --output "),
        ("through_a_file", "afile is a file, not a folder; choose another --output."),
        (errno.ENOSPC, f"cannot write it (No space left on device); {NOTHING_WRITTEN}"),
        (errno.EROFS, f"cannot write it (Read-only file system); {NOTHING_WRITTEN}"),
        (errno.EACCES, f"cannot write it (Permission denied); {NOTHING_WRITTEN}"),
    ],
)
def test_cli_unwritable_output_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, case, expected):
    (tmp_path / "afile").write_text("a file")
    (tmp_path / "folder").mkdir()
    before = sorted(tmp_path.rglob("*"))
    if case == "folder":
        out = tmp_path / "folder"
    elif case == "through_a_file":
        out = tmp_path / "afile" / "x.jsonl"
    else:
        out = tmp_path / "new" / "sub" / "x.jsonl"  # folders made for it are removed again
        fail_second_write(monkeypatch, case)
    line = assert_usage_error(capsys, partial(make_synthetic.main, ["--output", str(out), "--n", "3"]), expected)
    assert line.startswith(f"error: --output {out}")
    assert sorted(tmp_path.rglob("*")) == before and (tmp_path / "afile").read_text() == "a file"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--output", ""], "--output '' names no file; name one, e.g. --output problems.jsonl."),
        (["--output", "{tmp}/newdir/"], "names no file; name one, e.g. --output {tmp}/newdir/problems.jsonl."),
        (["--output", "{tmp}/x.jsonl", "--n", "0"], "--n must be a positive number of problems, got 0."),
        (["--output", "{tmp}/x.jsonl", "--preset", "nope"], "--preset must be one of base,"),
    ],
)
def test_cli_flags_that_name_no_file_or_no_value_are_one_line_naming_the_flag(tmp_path, capsys, argv, expected):
    """--output "" read as the current folder, --output dir/ wrote a file named dir, and --n and --preset went
    unnamed."""
    argv = [item.format(tmp=tmp_path) for item in argv]
    assert_usage_error(capsys, partial(make_synthetic.main, argv), expected.format(tmp=tmp_path))
    assert list(tmp_path.iterdir()) == []
