"""Tests for zerosiam_hf.scoring: GSM8K gold parsing, strict and flexible extraction, and accuracy (pure functions)."""

from fractions import Fraction

import pytest

from zerosiam_hf.scoring import accuracy, extract_flexible, extract_strict, parse_gold, score_answer


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("3 + 4 = 7\n#### 7", 7),
        ("1200 / 4 = 300\n#### 1,200", 1200),
        ("#### 1,234,567", 1234567),
        ("a loss\n#### -15", -15),
        ("half\n#### 2.5", Fraction(5, 2)),
        ("in dollars\n#### $18", 18),
        ("spaces\n####   42  ", 42),
        ("#### 3 was a draft\n#### 4", 4),  # the last marker is the gold line
    ],
)
def test_parse_gold(answer, expected):
    assert parse_gold(answer) == expected
    assert isinstance(parse_gold(answer), Fraction)


@pytest.mark.parametrize("answer", ["7", "The answer is 7", "#### seven", "####", ""])
def test_parse_gold_without_a_number_after_the_marker_raises(answer):
    with pytest.raises(ValueError, match="####"):
        parse_gold(answer)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so 3 + 4 = 7\n#### 7", 7),
        ("#### 1,200", 1200),
        ("####12", 12),
        ("The answer is 42.", 42),
        ("the answer is: 42", 42),
        ("The final answer is $1,000.", 1000),
        ("#### 5 then, on reflection, #### 6", 6),  # the last '#### N' wins
        ("The answer is 5. The answer is 8.", 8),  # the last 'The answer is N' wins
        ("The answer is 5.\n#### 6", 6),  # '#### N' takes precedence
        ("#### 6\nThe answer is 5.", 6),  # ... wherever it stands
        ("#### 5.0", 5),
        ("#### -3", -3),
    ],
)
def test_extract_strict(text, expected):
    assert extract_strict(text) == expected


@pytest.mark.parametrize("text", ["She has 7 apples.", "", "#### many", "the answer is seven"])
def test_extract_strict_needs_the_strict_form(text):
    assert extract_strict(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She has 7 apples.", 7),
        ("3 + 4 = 7, then 7 * 2 = 14", 14),  # the last number
        ("It costs $1,234.", 1234),
        ("It costs $1,234.50 in all.", Fraction(2469, 2)),
        ("5.0", 5),
        ("a drop of -12 degrees", -12),
        ("#### 30", 30),
        ("He has 12.", 12),  # a sentence's full stop is no decimal point
    ],
)
def test_extract_flexible(text, expected):
    assert extract_flexible(text) == expected


def test_extract_flexible_without_a_number():
    assert extract_flexible("no digits at all") is None
    assert extract_flexible("") is None


def test_decimal_and_integer_forms_are_equal():
    assert extract_flexible("5.0") == extract_flexible("5") == extract_strict("#### 5.00") == parse_gold("#### 5")


def test_score_answer_strict_and_flexible():
    gold = parse_gold("#### 1,200")
    both = score_answer("400 * 3 = 1,200\n#### 1200", gold)
    assert both == {"pred_strict": "1200", "pred_flexible": "1200", "correct_strict": True, "correct_flexible": True}
    flexible_only = score_answer("so it is 1200 students", gold)
    assert flexible_only == {
        "pred_strict": None,
        "pred_flexible": "1200",
        "correct_strict": False,
        "correct_flexible": True,
    }
    wrong = score_answer("#### 1200 or maybe 12", gold)
    assert wrong["correct_strict"] and not wrong["correct_flexible"]
    assert wrong["pred_flexible"] == "12"
    nothing = score_answer("I do not know", gold)
    assert nothing == {"pred_strict": None, "pred_flexible": None, "correct_strict": False, "correct_flexible": False}


def test_score_answer_compares_numbers_exactly():
    assert score_answer("#### 2.5", Fraction(5, 2))["correct_strict"]
    assert not score_answer("#### 2.49", Fraction(5, 2))["correct_strict"]
    assert score_answer("#### 7.0", Fraction(7))["correct_strict"]


def test_accuracy():
    records = [
        {"correct_strict": True, "correct_flexible": True},
        {"correct_strict": False, "correct_flexible": True},
        {"correct_strict": False, "correct_flexible": False},
        {"correct_strict": False, "correct_flexible": True, "check_timed_out": False},
        {"correct_strict": False, "correct_flexible": False, "check_timed_out": True},
    ]
    assert accuracy(records) == {"n": 5, "accuracy_strict": 20.0, "accuracy_flexible": 60.0, "check_timeouts": 1}


def test_accuracy_of_no_records():
    assert accuracy([]) == {"n": 0, "accuracy_strict": None, "accuracy_flexible": None, "check_timeouts": 0}
