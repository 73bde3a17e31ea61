"""Prompt noise at five severities, as image benchmarks grade their corruptions (1 barely visible, 5 heavy).

Each kind is a pure function of a question, a severity in 1..5 and a seed: the same three give the same text on every
machine (a string seed is hashed with SHA-512, so neither PYTHONHASHSEED nor the global random state matters). No kind
changes the value of a number the question holds, so the gold answer stays right:

- `typos`: letters swapped, dropped or doubled in a share of the words that grows with severity; words with digits and
  number words ("twelve", "half") are never touched.
- `distractors`: plausible sentences about the setting, without numbers, inserted between the question's sentences.
- `irrelevant_numbers`: sentences with a number that bears on nothing asked, inserted the same way.
- `number_formats`: a growing share of the numbers spelled in words, or written with thousands separators.
- `verbosity`: talk about the problem before and after it, with no facts and no numbers.

`noisy_dataset` applies one kind to every row of a dataset of problems, keyed on (seed, row index), before the
prompts are built; `data.load_scored_problems` calls it for `--noise`.
"""

import random
import re
from collections.abc import Callable

from datasets import Dataset

from .synthetic import number_to_words


SEVERITIES = (1, 2, 3, 4, 5)
# A file of the questions as the model saw them, written beside a noised run's record.
NOISED_QUESTIONS_FILE = "questions.jsonl"

# A number as a question writes it: digits with optional thousands separators and decimals (1,250.5).
NUMBER = re.compile(r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.,])\d+(?:\.\d+)?(?![\w])")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
_WORD = re.compile(r"[A-Za-z]+")
_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million billion dozen "
    "half halves twice thrice double triple quarter quarters third thirds once percent".split()
)

# Share of the eligible words given a typo, and of the numbers rewritten, at severity 1..5.
_TYPO_RATE = (0.05, 0.1, 0.2, 0.3, 0.45)
_TYPO_TRIES = 10
_FORMAT_RATE = (0.2, 0.4, 0.6, 0.8, 1.0)
# Sentences added at severity 1..5.
_ADDED_SENTENCES = (1, 2, 3, 4, 6)

_DISTRACTORS = (
    "The weather was mild, with a light breeze coming from the hills.",
    "A dog barked somewhere further down the street.",
    "The kitchen smelled of fresh bread that morning.",
    "Everyone in the neighbourhood knew the old baker by name.",
    "The radio was playing a song nobody could remember the title of.",
    "There was a long queue at the post office that day.",
    "The walls of the room had just been painted pale green.",
    "A delivery van was parked outside the school gate.",
    "The library had recently moved to a bigger building.",
    "Some clouds drifted slowly across the afternoon sky.",
    "The local team had won its match the night before.",
    "A new cafe had opened on the corner of the square.",
)
_IRRELEVANT_NUMBERS = (
    "The town library opened {k} years ago.",
    "A bus to the city centre leaves every {k} minutes.",
    "The nearby park has {k} wooden benches.",
    "The school building is {k} metres long.",
    "The cafe on the corner serves about {k} customers on a busy day.",
    "The bridge over the river was repaired {k} years ago.",
    "The football club across town has {k} players on its list.",
    "The radio station has been broadcasting for {k} years.",
    "A train passes the old mill {k} times a week.",
    "The market square has {k} lamp posts.",
)
_OPENINGS = (
    "Here is a little problem that came up the other day.",
    "I was thinking about something and would like some help with it.",
    "This is a question from a worksheet, and it is worth reading carefully.",
    "Let me describe a situation first, and then ask about it.",
    "Some people find questions like this easy and others do not.",
    "Please read the whole story before answering.",
)
_CLOSINGS = (
    "Take your time and think it through.",
    "I hope the question is clear enough.",
    "There is no trick here, as far as I know.",
    "Thanks a lot for having a look at it.",
    "It would be great to see how you get there.",
    "Any careful explanation is welcome.",
)


def _rng(seed, kind: str, severity: int) -> random.Random:
    """The random stream of one kind at one severity for one seed (a problem's own seed: `noisy_dataset`)."""
    return random.Random(f"zerosiam-noise/{seed}/{kind}/{severity}")


def _check_severity(severity: int) -> None:
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}.")


def _typo(word: str, rng: random.Random) -> str:
    """One letter of `word` swapped with the next, dropped or doubled (never the first, so the word stays readable);
    an edit that would make a number word ("then" -> "ten") is drawn again."""
    for _ in range(_TYPO_TRIES):
        at = rng.randrange(1, len(word) - 1)
        edit = rng.choice(("swap", "drop", "double"))
        if edit == "swap" and word[at] != word[at + 1]:
            typo = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
        elif edit == "double":
            typo = word[: at + 1] + word[at:]
        else:
            typo = word[:at] + word[at + 1 :]
        if typo.lower() not in _NUMBER_WORDS:
            return typo
    return word


def typos(question: str, severity: int, seed=0) -> str:
    """`question` with typos in a share of its words of three letters or more (5% at severity 1, 45% at 5, at least
    one word); words holding digits and number words keep their spelling."""
    _check_severity(severity)
    rng = _rng(seed, "typos", severity)
    spans = [m.span() for m in _WORD.finditer(question) if len(m.group()) >= 3]
    spans = [
        (a, b) for a, b in spans if question[a:b].lower() not in _NUMBER_WORDS and not _touches_digit(question, a, b)
    ]
    if not spans:
        return question
    chosen = sorted(rng.sample(spans, max(1, round(_TYPO_RATE[severity - 1] * len(spans)))))
    pieces, end = [], 0
    for a, b in chosen:
        pieces += [question[end:a], _typo(question[a:b], rng)]
        end = b
    return "".join(pieces) + question[end:]


def _touches_digit(text: str, start: int, end: int) -> bool:
    """Whether the word at text[start:end] is glued to a digit (5th, 3pm, x2)."""
    return (start > 0 and text[start - 1].isdigit()) or (end < len(text) and text[end].isdigit())


def _insert_sentences(question: str, sentences: list[str], rng: random.Random) -> str:
    """`sentences` placed at random boundaries between the question's sentences, never after its last one (the
    question asked stays at the end)."""
    parts = _SENTENCE_END.split(question.strip())
    for sentence in sentences:
        parts.insert(rng.randint(0, len(parts) - 1), sentence)
    return " ".join(parts)


def distractors(question: str, severity: int, seed=0) -> str:
    """`question` with irrelevant, number-free sentences about the setting among its own (1 at severity 1, 6 at 5)."""
    _check_severity(severity)
    rng = _rng(seed, "distractors", severity)
    return _insert_sentences(question, rng.sample(_DISTRACTORS, _ADDED_SENTENCES[severity - 1]), rng)


def irrelevant_numbers(question: str, severity: int, seed=0) -> str:
    """`question` with sentences that give a number nothing asked depends on (1 at severity 1, 6 at 5), the numbers
    drawn from a range that widens with severity (up to 20 at 1, up to 100 at 5)."""
    _check_severity(severity)
    rng = _rng(seed, "irrelevant_numbers", severity)
    top = (20, 30, 50, 75, 100)[severity - 1]
    templates = rng.sample(_IRRELEVANT_NUMBERS, _ADDED_SENTENCES[severity - 1])
    return _insert_sentences(question, [t.format(k=rng.randint(2, top)) for t in templates], rng)


def _reformat(number: str, rng: random.Random, spell: bool) -> str:
    """`number` (an integer) written another way with the same value: in words where it may be `spell`ed, else (1000
    or more) with its thousands separators added or dropped; a number of 1000 or more without separators gets them
    instead of words half of the time."""
    value = int(number.replace(",", ""))
    if not spell or ("," not in number and value >= 1000 and rng.random() < 0.5):
        return str(value) if "," in number else f"{value:,}"
    return number_to_words(value)


def number_formats(question: str, severity: int, seed=0) -> str:
    """`question` with a share of its whole numbers rewritten (20% at severity 1, all at 5, at least one): in words
    (12 -> twelve), or with thousands separators (1250 -> 1,250; $1250 -> $1,250). Decimals, numbers in 10%, 3/4,
    5:30, 2^3 or 5-7 stay as written, and amounts after a $ or beside another number ("ten 2 x 4 boards") are never
    spelled, so that no two numbers run together."""
    _check_severity(severity)
    rng = _rng(seed, "number_formats", severity)
    matches = []
    for m in NUMBER.finditer(question):
        value = float(m.group().replace(",", ""))
        if "." in m.group() or not _stands_alone(question, m.start(), m.end()) or value >= 1_000_000_000:
            continue
        after_dollar = m.start() > 0 and question[m.start() - 1] == "$"
        spell = not after_dollar and not _beside_number(question, m.start(), m.end())
        if spell or value >= 1000:
            matches.append((m, spell))
    if not matches:
        return question
    count = max(1, round(_FORMAT_RATE[severity - 1] * len(matches)))
    pieces, end = [], 0
    for m, spell in sorted(rng.sample(matches, count), key=lambda chosen: chosen[0].start()):
        pieces += [question[end : m.start()], _reformat(m.group(), rng, spell)]
        end = m.end()
    return "".join(pieces) + question[end:]


def _stands_alone(text: str, start: int, end: int) -> bool:
    """Whether the number at text[start:end] stands alone (not in 10%, 3/4, 5:30, 2^3, 5-7 or -3), so that its words
    read as the same value."""
    return (start == 0 or text[start - 1] not in "-/:^") and (end == len(text) or text[end] not in "%/:^-")


def _beside_number(text: str, start: int, end: int) -> bool:
    """Whether the word before or after text[start:end] is a number, in digits or in words."""
    before = re.search(r"(\w+)\W*$", text[:start])
    after = re.match(r"\W*(\w+)", text[end:])
    return any(m is not None and (m[1].isdigit() or m[1].lower() in _NUMBER_WORDS) for m in (before, after))


def verbosity(question: str, severity: int, seed=0) -> str:
    """`question` wrapped in talk about it, no facts and no numbers: sentences before and after it (1 at severity 1,
    6 at 5, the first before)."""
    _check_severity(severity)
    rng = _rng(seed, "verbosity", severity)
    count = _ADDED_SENTENCES[severity - 1]
    before = rng.sample(_OPENINGS, (count + 1) // 2)
    after = rng.sample(_CLOSINGS, count // 2)
    return " ".join([*before, question.strip(), *after])


NOISE_KINDS: dict[str, Callable[[str, int, object], str]] = {
    "typos": typos,
    "distractors": distractors,
    "irrelevant_numbers": irrelevant_numbers,
    "number_formats": number_formats,
    "verbosity": verbosity,
}


def add_noise(question: str, kind: str, severity: int, seed: int, index: int) -> str:
    """Problem `index`'s question with noise `kind` at `severity`; the same (seed, index, kind, severity) always give
    the same text."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}.")
    return NOISE_KINDS[kind](question, severity, f"{seed}/{index}")


def noisy_dataset(dataset: Dataset, kind: str, severity: int, seed: int) -> Dataset:
    """`dataset` (columns `question` and `index`, as `data.load_problems` makes them) with every question noised by
    `add_noise`, keyed on its row's `index`; every other column, the gold answers included, is untouched."""
    return dataset.map(
        lambda row: {"question": add_noise(row["question"], kind, severity, seed, row["index"])},
        desc=f"Adding {kind} noise (severity {severity})",
    )
