"""Tests for zerosiam_hf.data: file sources, validation with clear errors, data identity and prompt building."""

import hashlib
import json
import os
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest
from datasets import Dataset
from helpers import DATA_DIR, PROBLEMS, make_tokenizer, write_problems

from zerosiam_hf.checkers import NumericChecker
from zerosiam_hf.data import DataArguments, build_prompts, gold_answers, load_problems, prompts_cut
from zerosiam_hf.records import config_dict
from zerosiam_hf.tasks import MATH_INSTRUCTION, NUMERIC_INSTRUCTION


ROWS = [{"question": q, "answer": a} for q, a in PROBLEMS]


def write_rows(path: Path, rows: list[dict]) -> str:
    """Write rows in the format the file's suffix names and return the path."""
    frame = pd.DataFrame(rows)
    if path.suffix == ".jsonl":
        return write_problems(path, rows)
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    return str(path)


def load(source, **kwargs):
    return load_problems(DataArguments(dataset=str(source), **kwargs))


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_load_problems_from_each_file_format(tmp_path, suffix):
    path = write_rows(tmp_path / f"problems{suffix}", ROWS)
    dataset, identity = load(path)
    assert dataset.column_names == ["question", "answer", "index"]
    assert dataset["question"] == [q for q, _ in PROBLEMS]
    assert dataset["answer"] == [a for _, a in PROBLEMS]  # csv keeps the multi-line answers intact
    assert dataset["index"] == list(range(len(PROBLEMS)))
    assert identity == {
        "source": "file",
        "path": str(Path(path).resolve()),
        "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
        "benchmark": None,
        "checker": "numeric",
        "split": "test",
        "rows": len(PROBLEMS),
        "selected": len(PROBLEMS),
    }


def test_identity_follows_the_file_content(tmp_path):
    path = write_rows(tmp_path / "problems.jsonl", ROWS)
    first = load(path)[1]["sha256"]
    write_rows(tmp_path / "problems.jsonl", ROWS[::-1])
    assert load(path)[1]["sha256"] != first


def test_max_samples_takes_the_first_rows(tmp_path):
    dataset, identity = load(write_rows(tmp_path / "p.jsonl", ROWS), max_samples=4)
    assert dataset["question"] == [q for q, _ in PROBLEMS[:4]]
    assert dataset["index"] == [0, 1, 2, 3]
    assert (identity["rows"], identity["selected"]) == (6, 4)
    assert len(load(tmp_path / "p.jsonl", max_samples=100)[0]) == 6


def test_max_samples_must_be_positive():
    with pytest.raises(ValueError, match="--max_samples must be a positive integer, got 0"):
        DataArguments(max_samples=0)


def test_folder_source_picks_the_split_file(tmp_path):
    write_rows(tmp_path / "test.csv", ROWS[:2])
    write_rows(tmp_path / "train.jsonl", ROWS)
    assert load(tmp_path)[0]["question"] == [q for q, _ in PROBLEMS[:2]]
    assert len(load(tmp_path, split="train")[0]) == 6
    with pytest.raises(ValueError, match="no validation.jsonl/.json/.parquet/.csv in that folder"):
        load(tmp_path, split="validation")


def test_gold_answers_by_index(tmp_path):
    dataset, _ = load(write_rows(tmp_path / "p.jsonl", ROWS))
    gold = gold_answers(dataset, NumericChecker())
    assert gold == {0: 7, 1: 24, 2: 4, 3: 30, 4: 300, 5: 11}
    assert all(isinstance(value, Fraction) for value in gold.values())


# -------------------------------------------------------------------------------------------------------------- errors
def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"missing\.jsonl: no such file; check the path"):
        load(tmp_path / "missing.jsonl")


GOOD_LINE = json.dumps({"question": "q", "answer": "#### 1"}) + "\n"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "bad.jsonl",
            "{not json\n",
            "line 1 is not valid JSON (Expecting property name enclosed in double quotes at ",
        ),
        # the line a user must fix, which datasets' own error does not give
        (
            "bad.jsonl",
            GOOD_LINE * 2 + "\n" + '{"question": "q", "answer": }\n' + GOOD_LINE,
            "line 4 is not valid JSON",
        ),
        ("bad.parquet", "not a parquet file", "could not be read as .parquet"),
        ("bad.json", '{"question": ', "not valid JSON at line 1, column 14 (Expecting value); fix that line."),
        ("bad.json", '[\n {"question": "q",\n  "answer" "#### 1"}\n]\n', "not valid JSON at line 3, column 12"),
    ],
)
def test_malformed_file(tmp_path, name, content, expected):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError) as error:
        load(tmp_path / name)
    assert str(error.value).startswith(f"--dataset {tmp_path / name}: {expected}")


def test_json_lines_in_a_json_file_are_read(tmp_path):
    assert len(load(write_problems(tmp_path / "lines.json", ROWS))[0]) == len(ROWS)


def test_unreadable_file(tmp_path, monkeypatch):
    path = Path(write_rows(tmp_path / "p.jsonl", ROWS))
    path.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make the permission check see what another user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == path else real_access(p, mode))
    try:
        with pytest.raises(ValueError, match="the file is not readable; check its permissions"):
            load(path)
    finally:
        path.chmod(0o644)


def test_rows_without_question_or_answer(tmp_path):
    path = write_problems(tmp_path / "p.jsonl", [{"question": q, "solution": a} for q, a in PROBLEMS])
    with pytest.raises(ValueError, match=r"rows lack the column\(s\) answer; each row needs `question` and `answer`"):
        load(path)
    path = write_problems(tmp_path / "text.jsonl", [{"text": q} for q, _ in PROBLEMS])
    with pytest.raises(ValueError, match=r"rows lack the column\(s\) answer, question"):
        load(path)


def test_unparseable_gold_names_the_line(tmp_path):
    rows = [dict(row) for row in ROWS]
    rows[3]["answer"] = "5 * 6 = 30, so thirty pages"
    path = write_problems(tmp_path / "p.jsonl", rows)
    with pytest.raises(
        ValueError, match=r"line 4: gold answer has no '#### <number>' line \(ends with '.*thirty pages'\)"
    ):
        load(path)


@pytest.mark.parametrize(("name", "content"), [("empty.jsonl", ""), ("empty.csv", ""), ("blank.jsonl", "\n\n")])
def test_empty_file(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=rf"{name}: the file (is empty|holds no rows); give a file with problems"):
        load(tmp_path / name)


@pytest.mark.parametrize(("name", "content"), [("header.csv", "question,answer\n"), ("list.json", "[]")])
def test_file_without_rows(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=rf"{name}: the file holds no rows; give a file with problems"):
        load(tmp_path / name)


def test_parquet_file_without_rows(tmp_path):
    path = tmp_path / "none.parquet"
    pd.DataFrame({"question": pd.Series([], dtype=str), "answer": pd.Series([], dtype=str)}).to_parquet(path)
    with pytest.raises(ValueError, match=r"none.parquet: the file holds no rows; give a file with problems"):
        load(path)


@pytest.mark.parametrize("source", ["not-a-dataset", "a/b/c", "problems.txt"])
def test_unknown_source(source):
    with pytest.raises(ValueError, match="is neither a file .* a folder, a benchmark .* nor a hub id"):
        load(source)


def test_upper_case_suffix_is_a_file(tmp_path):
    path = write_problems(tmp_path / "GOOD.JSONL", ROWS)
    dataset, identity = load(path)
    assert dataset["question"] == [q for q, _ in PROBLEMS] and identity["path"] == str(Path(path).resolve())


def test_symlink_loop_is_reported_as_such(tmp_path):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    with pytest.raises(ValueError, match=r"loop\.jsonl: a symbolic link loop; point the link at a file"):
        load(loop)


def test_non_utf8_file_names_the_file(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"question": "Caf\u00e9 au lait costs 3.", "answer": "#### 3"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.jsonl: not UTF-8 text \(byte 0xe9 at offset 17\); save the file"):
        load(path)


@pytest.mark.parametrize(
    ("question", "expected"),
    [("", "the question is empty"), ("   ", "the question is empty"), (None, "the question is None, not text")],
)
def test_bad_questions_name_the_line(tmp_path, question, expected):
    rows = [dict(row) for row in ROWS]
    rows[2]["question"] = question
    with pytest.raises(ValueError, match=rf"p\.jsonl: line 3: {expected}; every row needs a question"):
        load(write_problems(tmp_path / "p.jsonl", rows))


def test_numeric_questions_are_refused(tmp_path):
    rows = [{"question": 17, "answer": "#### 3"}, {"question": 18, "answer": "#### 4"}]
    with pytest.raises(ValueError, match=r"line 1: the question is 17, not text; every row needs a question"):
        load(write_problems(tmp_path / "p.jsonl", rows))


# --------------------------------------------------------------------------------------------------------- instruction
def test_a_files_default_instruction_follows_its_checker():
    """The strict math score reads the last \\boxed{}: a math file asked for `#### <number>` would score 0 strict."""
    assert DataArguments(dataset="amc.jsonl", checker="math").instruction == MATH_INSTRUCTION
    assert DataArguments(dataset="amc.jsonl").instruction == NUMERIC_INSTRUCTION
    assert DataArguments(dataset="amc.jsonl", checker="math", instruction="Box it.").instruction == "Box it."
    recorded = config_dict(DataArguments(dataset="amc.jsonl", checker="math"))["DataArguments"]
    assert recorded["instruction"] == MATH_INSTRUCTION and recorded["checker"] == "math"  # as run.json holds it
    # Another dataset keeps a checker given explicitly, and the instruction that goes with it.
    moved = DataArguments(dataset="amc.jsonl", checker="math").for_dataset("aime.jsonl")
    assert (moved.checker, moved.instruction) == ("math", MATH_INSTRUCTION)
    assert DataArguments(dataset="amc.jsonl", checker="math").for_dataset("gsm8k").instruction == MATH_INSTRUCTION
    assert DataArguments(dataset="amc.jsonl").for_dataset("math500").instruction == MATH_INSTRUCTION


# ------------------------------------------------------------------------------------------------------------- prompts
@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def problems_dataset() -> Dataset:
    return Dataset.from_list([{**row, "index": i} for i, row in enumerate(ROWS)])


def test_build_prompts_uses_the_chat_template_and_drops_the_gold(tokenizer):
    prompts = build_prompts(problems_dataset(), tokenizer, NUMERIC_INSTRUCTION, max_prompt_length=512)
    assert prompts.column_names == ["question", "index", "prompt_ids", "prompt_length", "instruction"]
    assert prompts["index"] == list(range(len(PROBLEMS)))
    for (question, answer), ids in zip(PROBLEMS, prompts["prompt_ids"]):
        assert tokenizer.decode(ids) == f"<|user|>{question}\n\n{NUMERIC_INSTRUCTION}<|end|><|assistant|>"
        assert answer.split("####")[0].strip() not in tokenizer.decode(ids)


def test_build_prompts_cuts_long_prompts_from_the_left(tokenizer):
    full = build_prompts(problems_dataset(), tokenizer, "Solve.", max_prompt_length=512)["prompt_ids"]
    cut = build_prompts(problems_dataset(), tokenizer, "Solve.", max_prompt_length=10)["prompt_ids"]
    assert all(len(ids) == 10 for ids in cut)
    assert cut == [ids[-10:] for ids in full]
    assert all(tokenizer.decode(ids).endswith("Solve.<|end|><|assistant|>") for ids in cut)


def test_build_prompts_counts_and_reports_the_prompts_it_cuts(tokenizer, caplog):
    rows = [{**row, "index": i} for i, row in enumerate(ROWS)]
    rows[1]["question"] = "x" * 2000
    rows[4]["question"] = "y" * 600
    with caplog.at_level("WARNING", logger="zerosiam_hf"):
        prompts = build_prompts(Dataset.from_list(rows), tokenizer, "Solve.", max_prompt_length=512)
    assert prompts_cut(prompts) == 2
    assert "2 of 6 prompts are longer than 512 tokens and were cut from the left" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="zerosiam_hf"):
        assert prompts_cut(build_prompts(problems_dataset(), tokenizer, "Solve.", max_prompt_length=512)) == 0
    assert "cut from the left" not in caplog.text


def test_build_prompts_without_a_chat_template(tokenizer):
    plain = make_tokenizer()
    plain.chat_template = None
    prompts = build_prompts(problems_dataset(), plain, "", max_prompt_length=512)
    assert [plain.decode(ids) for ids in prompts["prompt_ids"]] == [f"{q}\n" for q, _ in PROBLEMS]


# --------------------------------------------------------------------------------------------------------------- gsm8k
def test_gsm8k_alias_prefers_zerosiam_data_dir(tmp_path, monkeypatch):
    (tmp_path / "gsm8k").mkdir()
    path = write_rows(tmp_path / "gsm8k" / "test.jsonl", ROWS)
    monkeypatch.setenv("ZEROSIAM_DATA_DIR", str(tmp_path))
    dataset, identity = load("gsm8k")
    assert len(dataset) == 6
    assert identity["path"] == str(Path(path).resolve())


def test_without_zerosiam_data_dir_a_benchmark_is_read_from_the_hub_alone(tmp_path, monkeypatch):
    """No folder near the package or the current directory stands in for $ZEROSIAM_DATA_DIR."""
    for folder in (tmp_path / "gsm8k", tmp_path / "shared" / "data" / "gsm8k", tmp_path / "data" / "gsm8k"):
        folder.mkdir(parents=True)
        write_rows(folder / "test.jsonl", ROWS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZEROSIAM_DATA_DIR", raising=False)
    with pytest.raises(
        ValueError,
        match=r"could not load openai/gsm8k from the hub .* set ZEROSIAM_DATA_DIR to a "
        r"folder holding gsm8k/test.jsonl \(now unset\), or give a file with --dataset\.$",
    ):
        load("gsm8k")
    monkeypatch.setenv("ZEROSIAM_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match=r"\(now .*elsewhere, which lacks it\)"):
        load("gsm8k")


def test_official_gsm8k_test_file(monkeypatch):
    gsm8k = DATA_DIR / "gsm8k" / "test.jsonl"
    if not gsm8k.is_file():
        pytest.skip(f"{gsm8k} is absent on this machine")
    monkeypatch.setenv("ZEROSIAM_DATA_DIR", str(DATA_DIR))
    dataset, identity = load(str(gsm8k))
    assert len(dataset) == identity["rows"] == 1319
    assert identity["path"] == str(gsm8k.resolve())
    assert identity["sha256"] == hashlib.sha256(gsm8k.read_bytes()).hexdigest()
    assert len(gold_answers(dataset, NumericChecker())) == 1319  # every official gold answer parses
    assert load("gsm8k")[1] == {**identity, "benchmark": "gsm8k"}  # the alias resolves to the same local file
