"""lm-evaluation-harness hooks for the tasks in this folder: the data, the prompt and the answer checker of the
project's own evaluation (`zerosiam_hf.data`, `zerosiam_hf.tasks`, `zerosiam_hf.checkers`), so that the harness reads
the same problems, asks the same question and scores the answer the same way as scripts/evaluate.py. Needs
zerosiam-hf installed where lm_eval runs."""

from datasets import DatasetDict

from zerosiam_hf.checkers import make_checker
from zerosiam_hf.data import DataArguments, load_problems
from zerosiam_hf.tasks import BENCHMARKS


_checkers = {}


def _checker(name: str):
    # One per process: the math checker keeps its child process (and sympy) between answers.
    if name not in _checkers:
        _checkers[name] = make_checker(name)
    return _checkers[name]


def _dataset(benchmark: str) -> DatasetDict:
    # lm_eval calls the `custom_dataset` hooks below with the task's metadata as keywords; the data ignores them.
    # load_problems names the columns `question` and `answer` whatever the benchmark calls them.
    problems, _ = load_problems(DataArguments(dataset=benchmark))
    return DatasetDict(test=problems)


def _prompt(benchmark: str, doc: dict) -> str:
    return f"{doc['question']}\n\n{BENCHMARKS[benchmark].instruction}"


def _results(benchmark: str, doc: dict, results: list[str]) -> dict:
    checker = _checker(BENCHMARKS[benchmark].checker)
    (score,) = checker.score([results[0]], [checker.parse_gold(str(doc["answer"]))])
    return {
        "exact_match_strict": float(score["correct_strict"]),
        "exact_match_flexible": float(score["correct_flexible"]),
    }


def gsm8k_dataset(**metadata) -> DatasetDict:
    """GSM8K's test split as evaluate.py reads it: from $ZEROSIAM_DATA_DIR/gsm8k/ when set, else the hub."""
    return _dataset("gsm8k")


def gsm8k_prompt(doc: dict) -> str:
    """The user message of a GSM8K problem: the question, then the `#### N` instruction."""
    return _prompt("gsm8k", doc)


def gsm8k_results(doc: dict, results: list[str]) -> dict:
    """Strict (`#### N` or `The answer is N`) and flexible (last number) exact numeric match, as evaluate.py."""
    return _results("gsm8k", doc, results)


def math500_dataset(**metadata) -> DatasetDict:
    """Math-500's test split as evaluate.py reads it: from $ZEROSIAM_DATA_DIR/math500/ when set, else the hub."""
    return _dataset("math500")


def math500_prompt(doc: dict) -> str:
    """The user message of a Math-500 problem: the problem, then the `\\boxed{}` instruction."""
    return _prompt("math500", doc)


def math500_results(doc: dict, results: list[str]) -> dict:
    """Strict (the last `\\boxed{}`) and flexible (anywhere) math-verify match against `answer`, as evaluate.py."""
    return _results("math500", doc, results)
