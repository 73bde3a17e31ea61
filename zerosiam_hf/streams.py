"""The order in which the test stream reaches the model: the shifts of an online run.

- `iid`: the Trainer's own seeded shuffle (by `--seed`, or `--data_seed`), the order of every run made before this
  flag existed, and the default.
- `file`: the rows in the order the file (or benchmark) gives them.
- `blocked`: problem families one after another, a shift every `block` prompts (default: each family whole).
- `interleaved`: the families taken in turn, one prompt each (mixed shifts).
- `by_answer`: problems sorted by the magnitude of their gold answers, smallest first: the label shift of a stream
  whose answers drift. The gold decides the order and nothing else; it never reaches the model.

A family is a row's `family` field: a data file names it (one string per row), and compare writes it into the
synthetic problems it draws (`synthetic_family`: the operations a problem chains). Orders other than `iid` reach the
trainer as ordered: `pipeline` makes its sampler sequential.
"""

from fractions import Fraction

from datasets import Dataset

from .synthetic import SyntheticProblem


STREAM_ORDERS = ("iid", "file", "blocked", "interleaved", "by_answer")
FAMILY_ORDERS = ("blocked", "interleaved")
FAMILY_COLUMN = "family"
_OPERATION_NAMES = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}


def synthetic_family(problem: SyntheticProblem) -> str:
    """The family of a synthetic problem: the operations it chains, in the order +-*/ ("add", "add and divide")."""
    used = {op for op, _ in problem.steps}
    return " and ".join(name for op, name in _OPERATION_NAMES.items() if op in used)


def blocked_order(families: list[str], block: int | None = None) -> list[int]:
    """Row positions in a stream blocked by family: `block` rows of each family in turn (families in the order they
    first appear, rows in their own order), until every row is placed; `block` None gives each family whole."""
    members: dict[str, list[int]] = {}
    for position, family in enumerate(families):
        members.setdefault(family, []).append(position)
    size = block or len(families)
    order = []
    for start in range(0, len(families), size):
        for rows in members.values():
            order += rows[start : start + size]
    return order


def magnitude_order(values: list) -> list[int]:
    """Row positions sorted by the magnitude of `values` (numbers), smallest first; ties keep their order."""
    return sorted(range(len(values)), key=lambda position: abs(values[position]))


def _number(gold) -> Fraction | None:
    """A gold answer as a number (the numeric checker's are already; a math gold when it is a plain number)."""
    if isinstance(gold, Fraction):
        return gold
    try:
        return Fraction(str(gold).replace(",", "").strip())
    except (ValueError, ZeroDivisionError):
        return None


def ordered_stream(
    dataset: Dataset, order: str, block: int | None, gold: dict, source: str, row_name=lambda index: f"row {index + 1}"
) -> Dataset:
    """`dataset` (with `index`, and `family` for the family orders) in stream `order`; `gold` (by index) is read for
    `by_answer` only. A request the data cannot meet is one line naming `source` and the fix."""
    if order in ("iid", "file"):
        return dataset
    if order == "by_answer":
        values = {index: _number(gold[index]) for index in dataset["index"]}
        bad = next((index for index, value in values.items() if value is None), None)
        if bad is not None:
            raise ValueError(
                f"--stream_order by_answer: --dataset {source}: {row_name(bad)} has the gold answer {gold[bad]!r}, "
                "not a number, so it has no magnitude; use another --stream_order for this data."
            )
        return dataset.select(magnitude_order([values[index] for index in dataset["index"]]))
    if FAMILY_COLUMN not in dataset.column_names:
        raise ValueError(
            f"--stream_order {order}: --dataset {source} names no problem families; give a file whose rows have a "
            f"`{FAMILY_COLUMN}` field (compare's --synthetic_preset draws them with one), or use --stream_order iid, "
            "file or by_answer."
        )
    families = dataset[FAMILY_COLUMN]
    missing = next((i for i, family in enumerate(families) if family is None or str(family) == ""), None)
    if missing is not None:
        raise ValueError(
            f"--stream_order {order}: --dataset {source}: {row_name(dataset['index'][missing])} has no "
            f"`{FAMILY_COLUMN}`; give every row one."
        )
    families = [str(family) for family in families]
    if len(set(families)) < 2:
        raise ValueError(
            f"--stream_order {order}: every problem of --dataset {source} is of the family {families[0]!r}, so the "
            "stream has no shift; give problems of two families or more (a synthetic preset with several "
            "--operations), or use --stream_order iid."
        )
    return dataset.select(blocked_order(families, 1 if order == "interleaved" else block))
