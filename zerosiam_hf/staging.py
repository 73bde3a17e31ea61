"""Output folders that appear whole or not at all: a run writes into `<output_dir>.partial`, locked against a second
run, and `publish` moves it into place when it is finished."""

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .records import RUN_FILE, matching_record, settings_identity


# Written into every folder this project creates: only folders holding it are ever deleted or replaced.
MARKER_FILE = ".zerosiam-hf"
# pid and host of the run writing a staging folder.
LOCK_FILE = ".lock"


@dataclass
class OutputArguments:
    """What a command may do to the folder it writes (every command that writes a folder takes these)."""

    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace an output_dir that holds a different run, and drop what an interrupted run left in "
            "<output_dir>.partial; only folders written by zerosiam-hf are ever replaced or dropped."
        },
    )


@contextmanager
def staged_output(
    output_dir: str,
    config: dict,
    overwrite: bool = False,
    *,
    resume: bool = False,
    record_file: str = RUN_FILE,
    state=None,
) -> Iterator[Path]:
    """Write a folder whole or not at all: refuse an `output_dir` that holds a different run, open and lock its
    staging folder, yield it to be written, publish it to `output_dir` when the block ends without an error, and
    release the lock in every case (an interrupted run's files stay in the staging folder, to resume or drop).

    Over several processes pass accelerate's `state`: the main process opens, publishes and closes, and all of them
    wait for each other around those steps (a process still reading the staging folder when the main one publishes
    it would find it gone).
    """
    main_process = state is None or state.is_main_process
    check_output_dir(output_dir, config, overwrite, record_file=record_file)
    staging = staging_path(output_dir)
    if main_process:
        open_staging(output_dir, config, overwrite, resume=resume, record_file=record_file)
    if state is not None:
        state.wait_for_everyone()
    try:
        yield staging
        if state is not None:  # every process is done with the staging folder before it moves
            state.wait_for_everyone()
        if main_process:
            publish(staging, output_dir)
        if state is not None:
            state.wait_for_everyone()
    finally:
        if main_process:
            close_staging(staging)


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


def _retired_path(output_dir: str) -> Path:
    target = Path(output_dir)
    return target.with_name(target.name + ".old")


def _owned(folder: Path) -> bool:
    return (folder / MARKER_FILE).is_file()


def _refuse_foreign(folder: Path) -> None:
    raise ValueError(
        f"{folder} was not made by zerosiam-hf (it holds no {MARKER_FILE}), so this run will not delete or replace "
        "it; move it away or choose another --output_dir."
    )


def _remove_owned(folder: Path) -> None:
    """Delete a folder this project made; refuse any other, since it may hold a user's files."""
    if folder.exists():
        if not _owned(folder):
            _refuse_foreign(folder)
        shutil.rmtree(folder)


def _lock_holder(staging: Path) -> dict | None:
    lock = staging / LOCK_FILE
    if not lock.exists():
        return None
    try:
        return json.loads(lock.read_text())
    except (OSError, json.JSONDecodeError):  # caught while another run writes it
        return {"pid": None, "host": None}


def _is_alive(holder: dict) -> bool | None:
    """Whether the process that wrote a lock still runs; None when this machine cannot tell (another host)."""
    if holder["host"] != socket.gethostname() or holder["pid"] is None:
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _write_lock(lock: Path) -> None:
    # O_EXCL: of two runs that race for one folder, exactly one creates the lock.
    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as handle:
        json.dump({"pid": os.getpid(), "host": socket.gethostname()}, handle)


def _create_staging(staging: Path, config: dict | None) -> bool:
    """Create `staging` with its marker and lock in one rename; False when a folder with content is there already."""
    staging.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=staging.name + ".new-", dir=staging.parent))
    (fresh / MARKER_FILE).write_text(json.dumps({"created_by": "zerosiam-hf", "config": config}, default=str))
    _write_lock(fresh / LOCK_FILE)
    try:
        os.rename(fresh, staging)  # atomic; replaces an empty folder, fails on one with content
    except OSError:
        shutil.rmtree(fresh)
        return False
    return True


def open_staging(
    output_dir: str, config: dict | None = None, overwrite: bool = False, resume: bool = False, record_file=RUN_FILE
) -> Path:
    """Create and lock the staging folder of `output_dir`, or take over an interrupted run's one to `resume` it.

    Only one run writes an output folder at a time: a second one is refused while the first one's process lives.
    Folders this project did not make (no marker file) are never deleted: `<output_dir>.partial`, `.old`, and an
    `output_dir` to be replaced that holds neither the marker nor a `record_file`.
    """
    target, staging, retired = Path(output_dir), staging_path(output_dir), _retired_path(output_dir)
    if retired.exists() and not _owned(retired):
        _refuse_foreign(retired)
    if target.is_dir() and any(target.iterdir()) and not (_owned(target) or (target / record_file).is_file()):
        _refuse_foreign(target)
    if _create_staging(staging, config):
        return staging
    if not _owned(staging):
        _refuse_foreign(staging)
    holder = _lock_holder(staging)
    if holder is not None:
        alive = _is_alive(holder)
        if alive:
            raise ValueError(
                f"--output_dir {output_dir}: another run (pid {holder['pid']} on {holder['host']}) is writing it; "
                "wait for it to finish or choose another folder."
            )
        if alive is None:
            raise ValueError(
                f"--output_dir {output_dir}: {staging / LOCK_FILE} names a run on {holder['host']} (pid "
                f"{holder['pid']}) that this machine cannot check; if that run is over, delete the lock file and run "
                "again."
            )
    leftovers = set(os.listdir(staging)) - {MARKER_FILE, LOCK_FILE}
    if resume:
        _check_same_settings(staging, config, output_dir)
        _take_lock(staging, output_dir)
        return staging
    if overwrite or not leftovers:
        _remove_owned(staging)
        if _create_staging(staging, config):
            return staging
        raise ValueError(f"--output_dir {output_dir}: another run took {staging} just now; choose another folder.")
    gone = f" (its process, pid {holder['pid']}, is gone)" if holder else ""
    how = (
        "resume it with --resume_from_checkpoint true or start over with --overwrite true"
        if any(staging.glob("checkpoint-*"))
        else "it has no checkpoint to resume from: start over with --overwrite true, or move it away"
    )
    raise ValueError(f"--output_dir {output_dir}: {staging} holds an interrupted run{gone}; {how}.")


def _check_same_settings(staging: Path, config: dict | None, output_dir: str) -> None:
    """A run resumes only with the settings it was started with: anything else would mix two runs in one record."""
    started = json.loads((staging / MARKER_FILE).read_text()).get("config")
    if config is None or started is None:
        return
    started, now = settings_identity(started), settings_identity(config)
    changed = sorted(
        name
        for section in started.keys() | now.keys()
        for name in started.get(section, {}).keys() | now.get(section, {}).keys()
        if started.get(section, {}).get(name) != now.get(section, {}).get(name)
    )
    if changed:
        raise ValueError(
            f"--output_dir {output_dir}: the interrupted run in {staging} was started with other settings "
            f"({', '.join('--' + name for name in changed)}); resume it with the flags it was started with."
        )


def _take_lock(staging: Path, output_dir: str) -> None:
    """Replace a dead run's lock by this process's one; of two runs that try at once, one wins."""
    lock = staging / LOCK_FILE
    if lock.exists():
        claimed = lock.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.rename(lock, claimed)
        except FileNotFoundError:
            raise ValueError(f"--output_dir {output_dir}: another run took {staging} just now.") from None
        claimed.unlink()
    try:
        _write_lock(lock)
    except FileExistsError:
        raise ValueError(f"--output_dir {output_dir}: another run took {staging} just now.") from None


def close_staging(staging: Path) -> None:
    """Release this process's lock on `staging`, and drop the folder when the run left nothing in it."""
    holder = _lock_holder(staging)
    if holder is not None and holder["pid"] == os.getpid():
        (staging / LOCK_FILE).unlink()
    if staging.is_dir() and _owned(staging) and not set(os.listdir(staging)) - {MARKER_FILE}:
        shutil.rmtree(staging)


def publish(staging: Path, output_dir: str) -> None:
    """Move a finished run from its staging folder to `output_dir`, replacing what was there only now."""
    target = Path(output_dir)
    if target.exists():
        retired = _retired_path(output_dir)
        _remove_owned(retired)
        target.rename(retired)
        staging.rename(target)
        shutil.rmtree(retired)  # open_staging checked that it holds a run, not a user's files
    else:
        staging.rename(target)
    (target / LOCK_FILE).unlink(missing_ok=True)
