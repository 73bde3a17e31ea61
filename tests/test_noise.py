"""Tests of the test-time conditions: prompt noise at five severities (zerosiam_hf.noise) and the order of the test
stream (zerosiam_hf.streams), through the data flags (--noise, --stream_order) to the run a trainer makes."""

import difflib
import json
import re
from fractions import Fraction

import pytest
from datasets import Dataset
from helpers import PROBLEMS, adapt_argv, read_jsonl, write_problems

from zerosiam_hf.commands import adapt, compare
from zerosiam_hf.config import ZeroSiamConfig
from zerosiam_hf.data import DataArguments, load_problems
from zerosiam_hf.noise import NOISE_KINDS, NOISED_QUESTIONS_FILE, NUMBER, add_noise, noisy_dataset
from zerosiam_hf.pipeline import _keep_stream_order
from zerosiam_hf.records import config_dict, settings_identity
from zerosiam_hf.streams import blocked_order, magnitude_order, ordered_stream, synthetic_family
from zerosiam_hf.synthetic import SHIFTS, SyntheticConfig, generate_records


QUESTIONS = [
    *(p.question for p in generate_records(4, SyntheticConfig(num_steps=3, operations="+-*/", max_value=50))),
    "A shop sold 1250 shirts at $12 each and 3.5 kg of tea. It kept 10% of 2,400 dollars. How much did it earn?",
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast and bakes with 4. How many are left?",
    *(q for q, _ in PROBLEMS),
]
_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million"
).split()
_WORD_NUMBER = re.compile(rf"\b(?:{'|'.join(_WORDS)})(?:[ -](?:{'|'.join(_WORDS)})\b)*\b")


def words_to_number(words: str) -> int:
    """Read back a number in words as number_to_words writes it ("one thousand two hundred fifty" -> 1250)."""
    total = current = 0
    for word in re.split(r"[ -]", words):
        position = _WORDS.index(word)
        if word == "hundred":
            current *= 100
        elif word in ("thousand", "million"):
            total += current * (1000 if word == "thousand" else 1_000_000)
            current = 0
        else:
            current += position if position < 20 else 10 * (position - 18)
    return total + current


def values(text: str) -> list[Fraction]:
    """Every number of `text` in order, written in digits (separators dropped) or in words."""
    found = [(m.start(), Fraction(m.group().replace(",", ""))) for m in NUMBER.finditer(text)]
    found += [(m.start(), Fraction(words_to_number(m.group()))) for m in _WORD_NUMBER.finditer(text)]
    return [value for _, value in sorted(found)]


def change(a: str, b: str) -> float:
    """How much of the text differs: 1 - difflib's similarity ratio."""
    return 1 - difflib.SequenceMatcher(None, a, b).ratio()


def test_words_to_number_reads_back_what_number_formats_writes():
    assert [words_to_number(w) for w in ("forty-two", "one thousand two hundred fifty", "three")] == [42, 1250, 3]


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_each_kind_changes_every_question_and_more_at_severity_5(kind):
    for severity in range(1, 6):
        for index, question in enumerate(QUESTIONS):
            assert add_noise(question, kind, severity, seed=0, index=index) != question, (severity, question)
    light, heavy = (
        sum(change(q, add_noise(q, kind, severity, 0, i)) for i, q in enumerate(QUESTIONS)) for severity in (1, 5)
    )
    assert heavy > light


@pytest.mark.parametrize("kind", ["typos", "distractors", "verbosity", "number_formats"])
def test_the_numbers_of_the_question_keep_their_values(kind):
    for severity in (1, 3, 5):
        for index, question in enumerate(QUESTIONS):
            assert values(add_noise(question, kind, severity, 0, index)) == values(question), (severity, question)


def test_irrelevant_numbers_add_numbers_and_keep_the_question_s_own_in_order():
    for index, question in enumerate(QUESTIONS):
        noised = values(add_noise(question, "irrelevant_numbers", 5, 0, index))
        own = iter(noised)
        assert all(value in own for value in values(question))  # a subsequence
        assert len(noised) == len(values(question)) + 6
        assert add_noise(question, "irrelevant_numbers", 5, 0, index).endswith(question.split(". ")[-1])


def test_number_formats_rewrites_in_words_and_with_separators():
    question = "A farm has 1250 hens and 12 cows. It earned $4000 and 3.5 tons of hay at 10% off."
    rewritten = {add_noise(question, "number_formats", 5, seed, 0) for seed in range(20)}
    assert any("1,250" in text for text in rewritten) and any(
        "one thousand two hundred fifty" in text for text in rewritten
    )
    assert all(
        "twelve cows" in text and "$4,000" in text and "3.5 tons" in text and "10%" in text for text in rewritten
    )


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_noise_is_a_function_of_seed_index_kind_and_severity(kind):
    question = QUESTIONS[4]
    assert add_noise(question, kind, 3, seed=7, index=2) == add_noise(question, kind, 3, seed=7, index=2)
    others = {add_noise(question, kind, 3, seed, 2) for seed in range(6)} | {add_noise(question, kind, 3, 7, 5)}
    assert len(others) > 1


def test_noisy_dataset_keys_each_row_on_its_index_and_leaves_the_gold():
    rows = [{"question": q, "answer": a, "index": 10 + i} for i, (q, a) in enumerate(PROBLEMS)]
    noised = noisy_dataset(Dataset.from_list(rows), "distractors", 2, seed=3)
    assert noised["answer"] == [a for _, a in PROBLEMS] and noised["index"] == [r["index"] for r in rows]
    assert noised["question"] == [add_noise(r["question"], "distractors", 2, 3, r["index"]) for r in rows]


@pytest.fixture
def family_file(tmp_path) -> str:
    """The six problems, each with a family: three of `add`, two of `multiply`, one of `divide`."""
    families = ["add", "multiply", "add", "multiply", "divide", "add"]
    rows = [{"question": q, "answer": a, "family": f} for (q, a), f in zip(PROBLEMS, families)]
    return write_problems(tmp_path / "families.jsonl", rows)


def test_load_problems_noises_the_questions_only_and_records_it(problems_file):
    clean, clean_identity = load_problems(DataArguments(dataset=problems_file))
    noised, identity = load_problems(DataArguments(dataset=problems_file, noise="typos", noise_severity=2))
    assert noised["answer"] == clean["answer"] and noised["index"] == clean["index"]
    assert all(a != b for a, b in zip(noised["question"], clean["question"]))
    assert identity["noise"] == {"kind": "typos", "severity": 2, "seed": 0} and "noise" not in clean_identity
    _, heavier = load_problems(DataArguments(dataset=problems_file, noise="typos", noise_severity=5))
    assert len({json.dumps(i, sort_keys=True) for i in (clean_identity, identity, heavier)}) == 3


def test_the_settings_identity_changes_with_every_condition_flag(problems_file):
    def identity(**flags):
        return settings_identity(config_dict(DataArguments(dataset=problems_file, **flags)))

    settings = [
        identity(),
        identity(noise="typos", noise_severity=1),
        identity(noise="typos", noise_severity=5),
        identity(noise="verbosity", noise_severity=1),
        identity(noise="typos", noise_severity=1, noise_seed=1),
        identity(stream_order="file"),
        identity(stream_order="blocked"),
        identity(stream_order="blocked", stream_block=2),
    ]
    assert len({json.dumps(s, sort_keys=True) for s in settings}) == len(settings)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"noise": "blur", "noise_severity": 1}, "--noise must be one of typos"),
        ({"noise": "typos"}, "--noise typos needs --noise_severity 1 to 5; got None"),
        ({"noise": "typos", "noise_severity": 6}, "needs --noise_severity 1 to 5; got 6"),
        ({"noise_severity": 3}, "--noise_severity 3 without --noise"),
        ({"stream_order": "random"}, "--stream_order must be one of iid, file, blocked"),
        ({"stream_block": 4}, "--stream_block 4 needs --stream_order blocked"),
        ({"stream_order": "blocked", "stream_block": 0}, "--stream_block must be a positive number"),
    ],
)
def test_condition_flags_that_cannot_work_are_one_line(problems_file, flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DataArguments(dataset=problems_file, **flags)


def test_blocked_order_shifts_every_block_and_keeps_each_family_s_order():
    families = ["a", "b", "a", "c", "b", "a", "a", "c"]
    assert blocked_order(families) == [0, 2, 5, 6, 1, 4, 3, 7]  # each family whole, in order of appearance
    order = blocked_order(families, 2)
    assert sorted(order) == list(range(len(families)))
    assert order == [0, 2, 1, 4, 3, 7, 5, 6]
    assert blocked_order(families, 1) == [0, 1, 3, 2, 4, 7, 5, 6]  # interleaved: the families in turn


def test_magnitude_order_sorts_by_absolute_value_and_keeps_ties_in_order():
    assert magnitude_order([5, -1, 3, 1, Fraction(1, 2)]) == [4, 1, 3, 2, 0]


def test_stream_orders_through_load_problems(family_file):
    file_rows, _ = load_problems(DataArguments(dataset=family_file))
    for order in ("iid", "file"):
        assert load_problems(DataArguments(dataset=family_file, stream_order=order))[0]["index"] == list(range(6))
    blocked, _ = load_problems(DataArguments(dataset=family_file, stream_order="blocked"))
    assert blocked["index"] == [0, 2, 5, 1, 3, 4] and blocked.column_names == file_rows.column_names
    interleaved, _ = load_problems(DataArguments(dataset=family_file, stream_order="interleaved"))
    assert interleaved["index"] == [0, 1, 4, 2, 3, 5]
    by_answer, _ = load_problems(DataArguments(dataset=family_file, stream_order="by_answer"))
    assert by_answer["index"] == [2, 0, 5, 1, 3, 4]  # golds 4, 7, 11, 24, 30, 300
    for ordered in (blocked, interleaved, by_answer):  # each row keeps its own question, answer and index
        assert [(r["question"], r["answer"]) for r in ordered] == [PROBLEMS[i] for i in ordered["index"]]


def test_family_orders_refuse_data_without_families(problems_file, tmp_path):
    with pytest.raises(ValueError, match=r"--stream_order blocked: --dataset .*names no problem families"):
        load_problems(DataArguments(dataset=problems_file, stream_order="blocked"))
    one = write_problems(tmp_path / "one.jsonl", [{"question": q, "answer": a, "family": "add"} for q, a in PROBLEMS])
    with pytest.raises(ValueError, match="is of the family 'add', so the stream has no shift"):
        load_problems(DataArguments(dataset=one, stream_order="interleaved"))


def test_by_answer_refuses_a_gold_that_is_no_number():
    rows = Dataset.from_list([{"question": "q", "index": 0}, {"question": "r", "index": 1}])
    with pytest.raises(ValueError, match=r"row 2 has the gold answer '\\\\frac\{x\}\{2\}', not a number"):
        ordered_stream(rows, "by_answer", None, {0: "3", 1: "\\frac{x}{2}"}, "math500")


def test_synthetic_families_name_the_operations_a_problem_chains():
    problems = generate_records(40, SyntheticConfig(operations="+-*/", max_value=50))
    assert {synthetic_family(p) for p in problems} == {"add", "subtract", "multiply", "divide"}
    two = generate_records(5, SyntheticConfig(num_steps=2, operations="+*", max_value=50))
    assert all(synthetic_family(p) in ("add", "multiply", "add and multiply") for p in two)


def test_an_ordered_stream_makes_the_trainer_sequential(tmp_path):
    args = ZeroSiamConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    _keep_stream_order(DataArguments(), args)
    assert args.train_sampling_strategy == "random"  # iid: the trainer's shuffle, as before
    _keep_stream_order(DataArguments(stream_order="by_answer"), args)
    assert args.train_sampling_strategy == "sequential"
    args.train_sampling_strategy = "group_by_length"
    with pytest.raises(ValueError, match="drop --train_sampling_strategy group_by_length"):
        _keep_stream_order(DataArguments(stream_order="file"), args)


def test_adapt_answers_the_stream_in_order_and_writes_the_noised_questions(tiny_model_dir, tmp_path, family_file):
    output_dir = tmp_path / "run"
    conditions = ["--stream_order", "by_answer", "--noise", "verbosity", "--noise_severity", "2"]
    record = adapt.main(adapt_argv(tiny_model_dir, family_file, output_dir, *conditions))
    answered = {row["index"]: row["updates_before"] for row in read_jsonl(output_dir / "predictions.jsonl")}
    # Two prompts a step, smallest gold first: 4 and 7, then 11 and 24, then 30 and 300.
    assert [answered[i] for i in (2, 0, 5, 1, 3, 4)] == [0, 0, 1, 1, 2, 2]
    assert record["config"]["ZeroSiamConfig"]["train_sampling_strategy"] == "sequential"
    assert record["data"]["noise"] == {"kind": "verbosity", "severity": 2, "seed": 0}
    seen = read_jsonl(output_dir / NOISED_QUESTIONS_FILE)
    assert [row["index"] for row in seen] == [2, 0, 5, 1, 3, 4]
    assert all(
        row["question"] == add_noise(PROBLEMS[row["index"]][0], "verbosity", 2, 0, row["index"]) for row in seen
    )


def test_compare_draws_synthetic_families_for_an_interleaved_noised_stream(tiny_model_dir, problems_file, tmp_path):
    output_dir = tmp_path / "compare"
    argv = [
        *("--model", tiny_model_dir, "--dataset", problems_file, "--output_dir", str(output_dir)),
        *("--methods", "none", "--seeds", "0", "--synthetic_preset", "add_subtract", "--synthetic_n", "6"),
        *("--stream_order", "interleaved", "--noise", "typos", "--noise_severity", "3"),
        *("--per_device_train_batch_size", "1", "--max_new_tokens", "2", "--report_to", "none"),
        *("--disable_tqdm", "true", "--use_cpu", "true"),
    ]
    compare.main(argv)
    drawn = read_jsonl(output_dir / "synthetic-add_subtract-seed0.jsonl")
    problems = generate_records(6, SHIFTS["add_subtract"])
    assert [row["family"] for row in drawn] == [synthetic_family(p) for p in problems]
    assert [row["question"] for row in drawn] == [p.question for p in problems]  # noised when loaded, not drawn so
    run = output_dir / "runs" / "none-seed0"
    answered = sorted(read_jsonl(run / "predictions.jsonl"), key=lambda row: row["updates_before"])
    # families add add add subtract subtract add, taken in turn one prompt a step
    assert [row["index"] for row in answered] == [0, 3, 1, 4, 2, 5]
    assert [row["updates_before"] for row in answered] == list(range(6))
    seen = read_jsonl(run / NOISED_QUESTIONS_FILE)
    assert all(
        row["question"] == add_noise(drawn[row["index"]]["question"], "typos", 3, 0, row["index"]) for row in seen
    )
