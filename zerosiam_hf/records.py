"""A result is a file: run records, package versions, and output folders that appear whole or not at all."""

import json
import os
import platform
import shutil
import sys
from collections.abc import Iterable
from dataclasses import asdict, fields, is_dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


RUN_FILE = "run.json"
PACKAGES = ("zerosiam-hf", "torch", "transformers", "peft", "accelerate", "datasets", "gguf", "bitsandbytes")
# Settings that change where or how a run reports, not what it computes.
_NOT_IDENTITY = {"output_dir", "overwrite", "report_to", "run_name", "logging_dir", "disable_tqdm", "push_to_hub"}


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
        out[type(args).__name__] = {name: _jsonable(values[name]) for name in names if name in values}
    return out


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _identity(config: dict) -> dict:
    return {section: {k: v for k, v in values.items() if k not in _NOT_IDENTITY} for section, values in config.items()}


def write_json(path: Path, payload) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> str:
    """Write one JSON object a line through a temporary file and a rename; an interrupted write keeps the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(path)


def matching_record(output_dir: str, config: dict, record_file: str = RUN_FILE) -> dict | None:
    """The record of a finished run in `output_dir` made with the same settings as `config`, or None."""
    previous = Path(output_dir) / record_file
    if not previous.is_file():
        return None
    try:
        record = json.loads(previous.read_text())
    except json.JSONDecodeError:
        return None
    return record if _identity(record.get("config", {})) == _identity(config) else None


def check_output_dir(output_dir: str, config: dict, overwrite: bool, record_file: str = RUN_FILE) -> None:
    """Refuse an `output_dir` that holds a different run (or anything else) unless `overwrite`; reads only.

    The same settings may be run again: the new run replaces the old one when it is published.
    """
    target = Path(output_dir)
    if not target.exists() or overwrite:
        return
    if not target.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file; choose a folder.")
    if (target / record_file).is_file():
        if matching_record(output_dir, config, record_file) is None:
            raise ValueError(
                f"--output_dir {output_dir} already holds a different run; choose another folder or pass "
                "--overwrite true."
            )
    elif any(target.iterdir()):
        raise ValueError(
            f"--output_dir {output_dir} is not empty and holds no {record_file}; choose another folder or pass "
            "--overwrite true."
        )


def staging_path(output_dir: str) -> Path:
    """The folder a run writes into before `publish` moves it to `output_dir`."""
    target = Path(output_dir)
    return target.with_name(target.name + ".partial")


def make_staging(output_dir: str) -> Path:
    """Create an empty staging folder for `output_dir`, dropping what an interrupted run left there."""
    staging = staging_path(output_dir)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish(staging: Path, output_dir: str) -> None:
    """Move a finished run from its staging folder to `output_dir`, replacing what was there only now."""
    target = Path(output_dir)
    if target.exists():
        retired = target.with_name(target.name + ".old")
        shutil.rmtree(retired, ignore_errors=True)
        target.rename(retired)
        staging.rename(target)
        shutil.rmtree(retired)
    else:
        staging.rename(target)
