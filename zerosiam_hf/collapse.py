"""When a method breaks: the step at which a run collapsed, read from its answers beside `none`'s on the same problems,
and from its logged diagnostics by the collapse guard's rule.

Both steps are pure functions of what a run wrote: its online answers (`predictions.jsonl`: `index`,
`updates_before`, `correct_flexible`) and its record (the config and `log_history` of `run.json`)."""

import dataclasses
from collections.abc import Iterator

from .config import ZeroSiamConfig
from .guards import recent_degenerate_share, shows_collapse
from .records import logged_series


# Answers in the running window: counted in answers, not batches, so that runs at batch sizes 1 and 16 weigh the same
# evidence. 32: at the 15% that `none` scores on the synthetic presets, a window of none's answers holds no right one
# 0.6% of the time (0.85 ** 32), where a smaller window would often tie a method stuck at 0 (a tie is not below); and
# half of the 64 problems of a scenario's cell, so that the window at the end of such a run reads its second half.
WINDOW = 32
# What the collapse guard reads, logged every step, and the option that holds its threshold.
GUARDED = {"collapse/entropy": "collapse_min_entropy", "answers/degenerate": "collapse_max_degenerate"}
_GUARD_DEFAULTS = {
    field.name: field.default
    for field in dataclasses.fields(ZeroSiamConfig)
    if field.name in {*GUARDED.values(), "collapse_min_answers"}
}


def _windows(answers: list[dict], window: int) -> Iterator[tuple[int, list[dict]]]:
    """(u, the last `window` answers given after at most u updates) for each number of updates u the answers were
    given after, in increasing order; answers after the same number of updates keep their order in the stream."""
    ordered = sorted(answers, key=lambda answer: answer["updates_before"])
    for end, answer in enumerate(ordered, 1):
        if end == len(ordered) or ordered[end]["updates_before"] != answer["updates_before"]:
            yield answer["updates_before"], ordered[max(0, end - window) : end]


def running_accuracy(answers: list[dict], window: int) -> list[tuple[int, float]]:
    """(updates, flexible accuracy % of the last `window` answers given after at most that many updates): the
    running accuracy of a run's stream (`answers`: its predictions.jsonl rows), fewer answers while the stream is
    shorter than the window."""
    return [
        (updates, 100 * sum(a["correct_flexible"] for a in last) / len(last))
        for updates, last in _windows(answers, window)
    ]


def accuracy_collapse_step(answers: list[dict], baseline: dict[int, float], window: int) -> int | None:
    """The first number of updates u from which on the running accuracy of the last `window` answers (as
    `running_accuracy`) stays below `baseline`'s accuracy on the same problems, to the end of the stream; None when
    the last window is not below. `baseline`: problem index -> 1 or 0, `none`'s flexible score of that problem on the
    same seed. A window as good as the baseline's (a tie) is not below."""
    step = None
    for updates, last in _windows(answers, window):
        below = sum(a["correct_flexible"] - baseline[a["index"]] for a in last) < 0
        if not below:
            step = None
        elif step is None:
            step = updates
    return step


def guard_thresholds(record: dict) -> dict[str, float]:
    """The collapse guard's threshold of each quantity it reads (`GUARDED`), as the run's config recorded them; a run
    recorded before they were options takes their defaults, which they have had since."""
    settings = record["config"]["ZeroSiamConfig"]
    return {logged: settings.get(name, _GUARD_DEFAULTS[name]) for logged, name in GUARDED.items()}


def _answers_per_entry(record: dict, min_answers: int) -> int:
    """The answers behind each logged entry (prompts per update over every process, times the updates an entry
    averages when it logs every N steps), or `min_answers` for a record that does not say or logs a share of the
    run, so that each entry is read alone."""
    settings = record["config"]["ZeroSiamConfig"]
    every = settings.get("logging_steps", 1)
    if "per_device_train_batch_size" not in settings or every < 1:
        return min_answers
    accumulation = settings.get("gradient_accumulation_steps", 1)
    return settings["per_device_train_batch_size"] * accumulation * record.get("num_processes", 1) * int(every)


def diagnostic_collapse_step(record: dict) -> int | None:
    """The first logged step whose clean-branch entropy (`collapse/entropy`) or degenerate share (`answers/degenerate`,
    over the recent answers as the guard reads it) shows collapse by the collapse guard's rule and the run's
    thresholds; None when no step does, or the run logged neither. A record made before `collapse_min_answers`
    existed is read as its guard read it, each step alone, when the guard was on, else with the option's default."""
    thresholds = guard_thresholds(record)
    settings = record["config"]["ZeroSiamConfig"]
    before_option = 1 if settings.get("collapse_guard") else _GUARD_DEFAULTS["collapse_min_answers"]
    min_answers = settings.get("collapse_min_answers", before_option)
    answers = _answers_per_entry(record, min_answers)
    entropy, degenerate = (dict(logged_series(record, key)) for key in ("collapse/entropy", "answers/degenerate"))
    recent = []
    for step in sorted(entropy.keys() | degenerate.keys()):
        if step in degenerate:
            recent.append((degenerate[step], answers))
        share = recent_degenerate_share(recent, min_answers)
        if shows_collapse(entropy.get(step), share, thresholds["collapse/entropy"], thresholds["answers/degenerate"]):
            return step
    return None
