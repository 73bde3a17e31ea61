"""A seeded generator of GSM8K-format word problems with exact answers and knobs for a known distribution shift.

Every problem is a chain of ``num_steps`` arithmetic operations on one person's count of one kind of object, e.g.
"Mia has 12 stickers. Then Mia buys 5 more stickers. How many stickers does Mia have now?". The ``answer`` field is a
GSM8K-style worked solution with calculator annotations (``12+5=<<12+5=17>>17``) and a final ``#### N`` line.

Each problem draws from separate random streams keyed on ``(seed, index)``: one for the arithmetic, one for the
person and object, one for the wording and one for the distractors. Changing ``phrasing`` or ``num_distractors``
therefore rewrites the question around the same arithmetic and leaves the ``answer`` field unchanged, which is what
makes the presets in ``SHIFTS`` controlled shifts. ``write_problems`` saves them as a jsonl file, whole or not at all.
"""

import contextlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .records import write_jsonl


OPERATIONS = "+-*/"
PHRASINGS = ("plain", "verbose", "words")
MAX_STEPS = 8
MAX_DISTRACTORS = 8
MAX_VALUE_LIMIT = 1_000_000
# Multipliers and divisors stay small ("3 times as many", "into 4 boxes"), as in real word problems.
MAX_FACTOR = 9
# Decreasing-only chains can dead-end (a prime cannot be split into boxes); redraw the problem this many times.
_MAX_ATTEMPTS = 1000

_NAMES = (
    ("Mia", "she", "her"),
    ("Noah", "he", "his"),
    ("Ava", "she", "her"),
    ("Liam", "he", "his"),
    ("Zoe", "she", "her"),
    ("Omar", "he", "his"),
    ("Lena", "she", "her"),
    ("Ravi", "he", "his"),
    ("Grace", "she", "her"),
    ("Diego", "he", "his"),
    ("Hana", "she", "her"),
    ("Felix", "he", "his"),
    ("Priya", "she", "her"),
    ("Tom", "he", "his"),
    ("Sofia", "she", "her"),
    ("Kenji", "he", "his"),
)
_OBJECTS = (
    "apples",
    "marbles",
    "stickers",
    "pencils",
    "cookies",
    "books",
    "stamps",
    "seashells",
    "coins",
    "trading cards",
    "beads",
    "balloons",
    "crayons",
    "buttons",
)

# Templates per phrasing. Fields: {name}, {pron} (he/she), {poss} (his/her), {obj}, {k} (the operand).
# Step sentences name the person instead of using a pronoun, so a distractor about someone else never makes the
# reference ambiguous.
_PLAIN = {
    "start": ("{name} has {k} {obj}.", "{name} owns {k} {obj}.", "{name} starts with {k} {obj}."),
    "+": (
        "Then {name} buys {k} more {obj}.",
        "Then {name} finds {k} more {obj}.",
        "Then {name} gets {k} more {obj} from a friend.",
    ),
    "-": (
        "Then {name} gives away {k} {obj}.",
        "Then {name} sells {k} {obj}.",
        "Then {name} loses {k} {obj}.",
    ),
    "*": (
        "Then {name} collects more until {pron} has {k} times as many {obj} as before.",
        "Then the number of {obj} {name} has becomes {k} times as large.",
    ),
    "/": (
        "Then {name} splits {poss} {obj} equally into {k} boxes and keeps only one box.",
        "Then {name} shares {poss} {obj} equally among {k} bags and keeps just one bag.",
    ),
    "question": ("How many {obj} does {name} have now?", "How many {obj} does {name} have at the end?"),
}
_VERBOSE = {
    "start": (
        "At the beginning of the week, {name} counted {poss} collection and found that {pron} had exactly {k} {obj}.",
        "{name} has always liked {obj}, and when {pron} checked this morning there were {k} of them on {poss} shelf.",
    ),
    "+": (
        "Later on, {name} went to the market and came back home with another {k} {obj} to add to the collection.",
        "A little while after that, a kind neighbour surprised {name} with a gift of {k} extra {obj}.",
    ),
    "-": (
        "After some thought, {name} decided to give {k} of the {obj} to a classmate who did not have any.",
        "Unfortunately, on the way to school {name} dropped {k} of the {obj} and could not find them again.",
    ),
    "*": (
        (
            "Over the following days {name} kept collecting, until {pron} had {k} times as many {obj} as {pron} "
            "had before."
        ),
        "Thanks to a lucky trade, the number of {obj} that {name} owned grew to {k} times what it had been.",
    ),
    "/": (
        (
            "Then {name} sorted all of {poss} {obj} into {k} boxes holding equal amounts, kept one box and gave "
            "the others away."
        ),
        "Wanting to share, {name} divided the {obj} into {k} equal piles and kept only one pile for {poss} own room.",
    ),
    "question": (
        "After all of this, how many {obj} does {name} end up with?",
        "Taking everything into account, how many {obj} does {name} have at this point?",
    ),
}
# Number-free sentences that only lengthen the verbose story.
_FILLERS = (
    "It had been a busy week for {name}.",
    "{name} likes to keep things neat and tidy.",
    "The weather was pleasant, so {name} spent a lot of time outside.",
    "{name} told {poss} family all about it at dinner.",
)
_DISTRACTORS = (
    "{other} has {k} {obj}.",
    "{other} once had {k} {obj} too.",
    "{name} also has {k} {other_obj}, which are kept in a drawer.",
    "{name} walked {k} metres to the park yesterday.",
    "The shop near {name}'s home is {k} metres away.",
    "{other} bought {k} {other_obj} last month.",
)
# 'words' is 'plain' with the numbers spelled out: same templates and same random draws, so only the numbers change.
_STYLES = {"plain": "plain", "verbose": "verbose", "words": "plain"}
_TEMPLATES = {"plain": _PLAIN, "verbose": _VERBOSE}

_SMALL = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((1_000_000, "million"), (1000, "thousand"), (100, "hundred"))
_SOLUTION = {
    "+": "After getting {k} more, {name} has {a}+{k}=<<{a}+{k}={b}>>{b} {obj}.",
    "-": "After losing {k}, {name} has {a}-{k}=<<{a}-{k}={b}>>{b} {obj}.",
    "*": "With {k} times as many, {name} has {a}*{k}=<<{a}*{k}={b}>>{b} {obj}.",
    "/": "Keeping one of {k} equal parts, {name} has {a}/{k}=<<{a}/{k}={b}>>{b} {obj}.",
}


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic word-problem generator; each one is a known axis of distribution shift."""

    num_steps: int = field(default=1, metadata={"help": f"Arithmetic operations chained per problem (1-{MAX_STEPS})."})
    max_value: int = field(
        default=20,
        metadata={"help": "Largest starting count and added/removed amount; factors stay within 2..min(9, this)."},
    )
    num_distractors: int = field(
        default=0,
        metadata={"help": f"Irrelevant sentences with numbers inserted into the story (0-{MAX_DISTRACTORS})."},
    )
    phrasing: str = field(
        default="plain",
        metadata={"help": "Wording: 'plain' (short), 'verbose' (long narrative), 'words' (plain, numbers spelled)."},
    )
    operations: str = field(
        default="+", metadata={"help": "Operations to draw from, a subset of '+-*/'; division is always exact."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the generator; the same seed gives the same problems."})

    def __post_init__(self):
        if not isinstance(self.num_steps, int) or not 1 <= self.num_steps <= MAX_STEPS:
            raise ValueError(f"num_steps must be an integer in [1, {MAX_STEPS}], got {self.num_steps!r}.")
        if not isinstance(self.max_value, int) or not 2 <= self.max_value <= MAX_VALUE_LIMIT:
            raise ValueError(f"max_value must be an integer in [2, {MAX_VALUE_LIMIT}], got {self.max_value!r}.")
        if not isinstance(self.num_distractors, int) or not 0 <= self.num_distractors <= MAX_DISTRACTORS:
            raise ValueError(
                f"num_distractors must be an integer in [0, {MAX_DISTRACTORS}], got {self.num_distractors!r}."
            )
        if self.phrasing not in PHRASINGS:
            raise ValueError(f"phrasing must be one of {PHRASINGS}, got {self.phrasing!r}.")
        ops = self.operations
        if not isinstance(ops, str) or not ops or set(ops) - set(OPERATIONS) or len(set(ops)) != len(ops):
            raise ValueError(
                f"operations must be a non-empty string of distinct characters from {OPERATIONS!r}, got {ops!r}; "
                "use e.g. '+-' or '+-*/'."
            )
        # Without '+' or '*' the count only shrinks, so the start must leave room for every step to stay >= 1.
        if not set(ops) & {"+", "*"} and self.max_value < 2**self.num_steps:
            raise ValueError(
                f"max_value must be at least 2**num_steps={2**self.num_steps} when operations={ops!r} only shrink "
                f"the count, got {self.max_value}; raise max_value, lower num_steps, or add '+' or '*'."
            )


# Controlled shifts: each preset changes one knob of "base"; docs/SYNTHETIC.md gives their measured accuracies.
SHIFTS: dict[str, SyntheticConfig] = {
    "base": SyntheticConfig(),
    "add_subtract": SyntheticConfig(operations="+-"),
    "multiplicative": SyntheticConfig(operations="*/"),
    "two_steps": SyntheticConfig(num_steps=2),
    "distractors": SyntheticConfig(num_distractors=1),
    "verbose": SyntheticConfig(phrasing="verbose"),
    "words": SyntheticConfig(phrasing="words"),
    "large_numbers": SyntheticConfig(max_value=100),
}


@dataclass(frozen=True)
class SyntheticProblem:
    """One generated problem with the arithmetic it encodes, so that its answer can be checked independently."""

    question: str
    answer: str
    start: int
    steps: tuple[tuple[str, int], ...]
    result: int

    def as_row(self) -> dict[str, str]:
        """Return the GSM8K-format row ``{"question", "answer"}``."""
        return {"question": self.question, "answer": self.answer}


def number_to_words(n: int) -> str:
    """Spell a non-negative integer below one billion in English words (``42`` -> ``"forty-two"``)."""
    if not 0 <= n < 1_000_000_000:
        raise ValueError(f"n must be in [0, 1e9), got {n}.")
    if n < 20:
        return _SMALL[n]
    if n < 100:
        tens, rest = divmod(n, 10)
        return _TENS[tens] + (f"-{_SMALL[rest]}" if rest else "")
    scale, name = next((scale, name) for scale, name in _SCALES if n >= scale)
    head, rest = divmod(n, scale)
    return f"{number_to_words(head)} {name}" + (f" {number_to_words(rest)}" if rest else "")


def _stream(seed: int, index: int, name: str) -> random.Random:
    # A string seed is hashed with SHA-512, so the streams do not depend on PYTHONHASHSEED or the global RNG.
    return random.Random(f"zerosiam-synthetic/{seed}/{index}/{name}")


def _draw_chain(rng: random.Random, config: SyntheticConfig) -> tuple[int, tuple[tuple[str, int], ...]]:
    """Draw a start value and operations whose every intermediate result is a positive integer."""
    top = config.max_value
    factors = range(2, min(MAX_FACTOR, top) + 1)
    for _ in range(_MAX_ATTEMPTS):
        value = start = rng.randint(2, top)
        steps = []
        for _ in range(config.num_steps):
            divisors = [k for k in factors if value % k == 0]
            feasible = [op for op in config.operations if (op != "-" or value > 1) and (op != "/" or divisors)]
            if not feasible:
                break
            op = rng.choice(feasible)
            if op == "+":
                k = rng.randint(1, top)
            elif op == "-":
                k = rng.randint(1, min(top, value - 1))
            elif op == "*":
                k = rng.choice(factors)
            else:
                k = rng.choice(divisors)
            value = _apply(op, value, k)
            steps.append((op, k))
        else:
            return start, tuple(steps)
    raise ValueError(
        f"could not draw a {config.num_steps}-step chain with operations={config.operations!r} and "
        f"max_value={config.max_value} in {_MAX_ATTEMPTS} attempts; raise max_value or add '+' or '*'."
    )


def _apply(op: str, a: int, k: int) -> int:
    if op == "+":
        return a + k
    if op == "-":
        return a - k
    if op == "*":
        return a * k
    return a // k


def _pick(rng: random.Random, options: tuple[str, ...], used: set[str]) -> str:
    """Choose a template, avoiding ones already used in this problem while any are left."""
    choice = rng.choice([o for o in options if o not in used] or options)
    used.add(choice)
    return choice


def _make_problem(index: int, config: SyntheticConfig) -> SyntheticProblem:
    """Build problem ``index`` of the stream defined by ``config``."""
    start, steps = _draw_chain(_stream(config.seed, index, "arithmetic"), config)
    story = _stream(config.seed, index, "story")
    name, pron, poss = story.choice(_NAMES)
    obj = story.choice(_OBJECTS)
    slots = {"name": name, "pron": pron, "poss": poss, "obj": obj}

    style = _STYLES[config.phrasing]
    text = _stream(config.seed, index, f"text/{style}")
    templates = _TEMPLATES[style]
    fmt = number_to_words if config.phrasing == "words" else str
    used: set[str] = set()
    sentences = [_pick(text, templates["start"], used).format(k=fmt(start), **slots)]
    sentences += [_pick(text, templates[op], used).format(k=fmt(k), **slots) for op, k in steps]
    if style == "verbose":
        sentences.insert(1, text.choice(_FILLERS).format(**slots))

    distract, used_distractors = _stream(config.seed, index, "distractors"), set()
    for _ in range(config.num_distractors):
        other = distract.choice([n for n, _, _ in _NAMES if n != name])
        other_obj = distract.choice([o for o in _OBJECTS if o != obj])
        sentence = _pick(distract, _DISTRACTORS, used_distractors).format(
            other=other, other_obj=other_obj, k=fmt(distract.randint(2, config.max_value)), **slots
        )
        # After the opening sentence, so that the protagonist is introduced first.
        sentences.insert(distract.randint(1, len(sentences)), sentence)
    question = " ".join(sentences + [text.choice(templates["question"]).format(**slots)])

    lines, value = [], start
    for op, k in steps:
        new = _apply(op, value, k)
        lines.append(_SOLUTION[op].format(k=k, a=value, b=new, name=name, obj=obj))
        value = new
    answer = "\n".join(lines + [f"#### {value}"])
    return SyntheticProblem(question=question, answer=answer, start=start, steps=steps, result=value)


def generate_records(n: int, config: SyntheticConfig) -> list[SyntheticProblem]:
    """Generate ``n`` problems with their arithmetic; the same ``config`` always gives the same list."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}.")
    return [_make_problem(i, config) for i in range(n)]


def generate_problems(n: int, config: SyntheticConfig) -> list[dict[str, str]]:
    """Generate ``n`` GSM8K-format rows ``{"question", "answer"}`` (answer ends with ``#### N``)."""
    return [problem.as_row() for problem in generate_records(n, config)]


def write_problems(output: str, problems: list[dict[str, str]], overwrite: bool = False) -> str:
    """Write `problems` to the jsonl file `output` (`--output`) whole or not at all, creating its folders: a folder, a
    path through a file and, unless `overwrite`, an existing file are refused, and a file-system error is one line
    that leaves neither a temporary file nor a folder this call made."""
    if not output or output.endswith("/"):  # Path() would read "" as "." and drop a trailing slash
        raise UsageError(f"--output {output!r} names no file; name one, e.g. --output {output}problems.jsonl.")
    path = Path(output)
    made = [folder for folder in path.parents if not folder.exists()]  # those write_jsonl makes, innermost first
    above = path.parents[len(made)] if len(made) < len(path.parents) else None
    if path.is_dir():
        raise UsageError(f"--output {output} is a folder; name a file, e.g. --output {path / 'problems.jsonl'}.")
    if above is not None and not above.is_dir():
        raise UsageError(f"--output {output}: {above} is a file, not a folder; choose another --output.")
    if path.exists() and not overwrite:
        raise UsageError(f"--output {output} exists; choose another file or pass --overwrite true to replace it.")
    try:
        return write_jsonl(path, problems)  # through a temporary file and a rename: the old file stays until then
    except OSError as error:
        for folder in made:
            with contextlib.suppress(OSError):  # one that is not empty now is another process's
                folder.rmdir()
        raise UsageError(
            f"--output {output}: cannot write it ({error.strerror or error}); nothing was written: free space on that "
            "disk or choose an --output you can write to."
        ) from None
