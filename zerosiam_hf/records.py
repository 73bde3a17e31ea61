"""A result is a file: run records (settings, package versions) written as JSON that a reader never sees half of."""

import json
import os
import platform
import re
import sys
from collections.abc import Iterable
from dataclasses import asdict, fields, is_dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


RUN_FILE = "run.json"
PREDICTIONS_FILE = "predictions.jsonl"  # a run's scored answers, one a line
PACKAGES = ("zerosiam-hf", "torch", "transformers", "peft", "accelerate", "datasets", "gguf", "bitsandbytes")
# Settings that change where or how a run reports, or what it may run to load its model, not what it computes.
_NOT_IDENTITY = {
    "trust_remote_code",
    "output_dir",
    "overwrite",
    "report_to",
    "run_name",
    "logging_dir",
    "disable_tqdm",
    "push_to_hub",
    "resume_from_checkpoint",
    "dataloader_pin_memory",
    "oracle",  # compare's permission to include an oracle: which methods ran is in --methods
    "collapse_window",  # how compare reads the runs, not what they computed
}
# The staging folder's suffix at the end of a path's part (staging.staging_path), which `_published` drops.
_STAGED = re.compile(r"\.partial(?=/|$)")
# What a hub dataset's identity says about the hub rather than the data (its commit, asked for when online), and
# what follows from the data and the settings (prompts cut to fit).
_NOT_DATA_IDENTITY = {"revision", "prompts_cut"}
# What a record holds in place of a secret's value.
REDACTED = "<redacted>"


def is_secret(name: str) -> bool:
    """Whether a setting or flag named `name` holds a secret (hub_token: any name ending in `_token`), which no record
    or printed command may hold. The parser takes `--hub-token` for `--hub_token`: both spellings are one name."""
    return name.lstrip("-").replace("-", "_").endswith("_token")


def versions() -> dict:
    """Versions of Python, the platform and the packages a run depends on."""
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def config_dict(*arguments) -> dict:
    """The run's settings as plain JSON values, one section per argument dataclass."""
    out = {}
    for args in arguments:
        values = asdict(args) if is_dataclass(args) else dict(args)
        # TrainingArguments carries many fields; keep those of its dataclass, rendered as JSON can hold them.
        names = [f.name for f in fields(args)] if is_dataclass(args) else list(values)
        out[type(args).__name__] = {name: _recorded(name, values[name]) for name in names if name in values}
    return out


def _recorded(name: str, value):
    return REDACTED if is_secret(name) and value is not None else _jsonable(value)


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _published(value):
    """A path inside a staging folder (`<output_dir>.partial/...`) as the published folder will hold it: a comparison
    makes its runs and their problem files in its staging folder, and a run found there, or in the published folder,
    or in a comparison published before it staged, is the same run."""
    return _STAGED.sub("", value) if isinstance(value, str) else value


# TrainingArguments' settings of the optimizer and its schedule: a run that takes no optimizer step (none, slot,
# em_inf: `Method.updates_weights`) computes the same whatever they are.
_OPTIMIZER_SETTINGS = {
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "optim",
    "optim_args",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "warmup_ratio",
}
# The collapse guard's settings: it puts the trained weights back, which a method taking no optimizer step never moves.
_GUARD_SETTINGS = {"collapse_guard", "collapse_min_entropy", "collapse_max_degenerate", "collapse_min_answers"}


def _takes_optimizer_steps(run: dict) -> bool:
    from .methods import METHODS  # the registry imports torch: asked only once a record's identity is

    method = METHODS.get(run.get("method"))
    return method is None or method.updates_weights


def _prompts_per_update(run: dict) -> int:
    """Prompts per optimizer step on one process, as a run's settings give them (a short last batch aside)."""
    return run.get("per_device_train_batch_size", 1) * run.get("gradient_accumulation_steps", 1)


def settings_identity(config: dict) -> dict:
    """The settings that decide what a run computes: `config` without those that only say where or how it reports,
    without those left unset (None), without `collapse_min_answers` where it changes nothing (no guard, or at least as
    many prompts per update: each batch read alone, as before the option existed), and without the optimizer's and
    the collapse guard's for a method that takes no optimizer step (so the runs of none in the cells of a
    learning-rate sweep, or with and without the guard, are one run)."""
    # A token says who may push the result, not what the run computes. An unset setting is the one a record written
    # before it existed ran with (another method's option, a scenario not asked for): leaving None out lets that record
    # still match, so adding a method or an option does not disown the runs already made.
    kept = {
        section: {
            k: _published(v)
            for k, v in values.items()
            if k not in _NOT_IDENTITY and not is_secret(k) and v is not None
        }
        for section, values in config.items()
    }
    run = kept.get("ZeroSiamConfig", {})
    if "method" in run and not _takes_optimizer_steps(run):
        kept["ZeroSiamConfig"] = {k: v for k, v in run.items() if k not in _OPTIMIZER_SETTINGS | _GUARD_SETTINGS}
    for values in kept.values():  # a run's settings, or a comparison's shared ones
        if "collapse_min_answers" in values and (
            not values.get("collapse_guard") or values["collapse_min_answers"] <= _prompts_per_update(values)
        ):
            del values["collapse_min_answers"]
    # A section of reporting settings alone says nothing about the run, whatever its name (the `overwrite` flag's
    # group was once called AdaptArguments): records written before a rename still match.
    return {section: values for section, values in kept.items() if values}


def changed_settings(started: dict, now: dict) -> list[str]:
    """The flags (`--name`) whose values differ between two runs' settings (`config_dict`), those that only say where
    or how a run reports left out."""
    started, now = settings_identity(started), settings_identity(now)
    return sorted(
        f"--{name}"
        for section in started.keys() | now.keys()
        for name in started.get(section, {}).keys() | now.get(section, {}).keys()
        if started.get(section, {}).get(name) != now.get(section, {}).get(name)
    )


def run_identity(config: dict, data: dict) -> dict:
    """What a run computes from: its settings (`settings_identity` of `config_dict`) and its data's identity (as
    `data.load_problems` returns it). A checkpoint carries it, and a run resumes only from one with the same."""
    return {
        "settings": settings_identity(config),
        "data": {key: value for key, value in data.items() if key not in _NOT_DATA_IDENTITY},
    }


def logged_series(record: dict, key: str) -> list[tuple[int, float]]:
    """(step, value) of one logged diagnostic in a run record's log history."""
    return [(entry["step"], entry[key]) for entry in record["log_history"] if key in entry]


def write_json(path: Path, payload) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _temporary(path: Path) -> Path:
    # One name per process: processes writing the same file at once (compare.py workers sharing a folder) each
    # rename a whole file of their own.
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def _jsonl_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, default=str) + "\n"


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The objects of a JSON-lines file, one a line (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def problem_scores(answers: list[dict], key: str = "correct_flexible") -> list[float]:
    """A run's score `key` of each answer (1 right, 0 wrong) in problem order, from its predictions.jsonl rows."""
    return [float(row[key]) for row in sorted(answers, key=lambda row: row["index"])]


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> str:
    """Write one JSON object a line through a temporary file and a rename; an interrupted write keeps the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(_jsonl_line(row))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(path)


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows to a JSON-lines file and flush them, so that a killed process leaves every row written so far."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(_jsonl_line(row) for row in rows))


def matching_record(output_dir: str, config: dict, record_file: str = RUN_FILE) -> dict | None:
    """The record of a finished run in `output_dir` made with the same settings as `config`, or None."""
    previous = Path(output_dir) / record_file
    if not previous.is_file():
        return None
    try:
        record = json.loads(previous.read_text())
    except json.JSONDecodeError:
        return None
    return record if settings_identity(record.get("config", {})) == settings_identity(config) else None
