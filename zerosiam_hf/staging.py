"""Output folders that appear whole or not at all: a run writes into `<output_dir>.partial`, locked against a second
run, and `publish` moves it into place when it is finished."""

import errno
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RunStopped
from .records import RUN_FILE, matching_record, settings_identity, write_json


logger = logging.getLogger(__name__)


# Written into every folder this project creates: only folders holding it are ever deleted or replaced.
MARKER_FILE = ".zerosiam-hf"
# pid and host of the run writing a staging folder.
LOCK_FILE = ".lock"
# What a run wrote into a folder it published is listed in its marker; a folder published before that list existed
# (or one with a run record and no marker) counts these names as the project's, and anything else as the user's.
RUN_OUTPUTS = {
    "run.json",
    "eval.json",
    "export.json",
    "predictions.jsonl",
    "predictions-base.jsonl",
    "predictions-adapted.jsonl",
    "adapter_config.json",
    "adapter_model.safetensors",
    "README.md",
    "training_args.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
}
# The advice after a file-system error, by its errno: what makes the next try work.
_OS_ADVICE = {
    errno.ENOSPC: "free space on that disk or choose another --output_dir",
    errno.EDQUOT: "free space within your quota or choose another --output_dir",
    errno.EROFS: "choose an --output_dir on a file system you can write to",
    errno.EACCES: "choose an --output_dir you can write to, or change that folder's permissions",
    errno.EPERM: "choose an --output_dir you can write to, or change that folder's permissions",
    errno.EEXIST: "a part of that path is a file, not a folder; choose another --output_dir",
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another --output_dir",
}


@dataclass
class OutputArguments:
    """What a command may do to the folder it writes (every command that writes a folder takes these)."""

    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace an output_dir that holds a different run, and drop what an interrupted run left in "
            "<output_dir>.partial; only folders written by zerosiam-hf are ever replaced or dropped, and a file no "
            "run wrote there (your notes) is never deleted: such a folder is refused."
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
    _refuse_to_replace_foreign_entries(output_dir, record_file)
    staging = staging_path(output_dir)
    if main_process:
        try:
            open_staging(output_dir, config, overwrite, resume=resume, record_file=record_file)
        except OSError as error:  # nothing was written: a path through a file, a read-only or full disk
            raise ValueError(f"--output_dir {output_dir}: {_os_problem(error, staging)}.") from None
    if state is not None:
        state.wait_for_everyone()
    try:
        try:
            yield staging
        except OSError as error:
            if not _writing(error, staging):  # a model or data file that cannot be read is no output problem
                raise
            raise _failed_run(error, output_dir, staging, main_process) from None
        if state is not None:  # no process still reads the staging folder (the adapter's finiteness) when it moves
            state.wait_for_everyone()
        if main_process:
            try:
                publish(staging, output_dir)
            except OSError as error:
                problem = _os_problem(error, staging)
                raise RunStopped(
                    f"--output_dir {output_dir}: the finished run could not be published ({problem}); it is whole in "
                    f"{staging}: move it to {output_dir} yourself, or run the command again with --overwrite true."
                ) from None
        if state is not None:
            state.wait_for_everyone()
    finally:
        if main_process:
            close_staging(staging)


def _os_problem(error: OSError, folder: Path) -> str:
    """A file-system error in a few words: the path (or the `folder` written into, when a failed close names no
    file), the cause and what to do about it."""
    where = error.filename if error.filename is not None else f"into {folder}"
    if Path(str(where)).name.startswith(folder.name + ".new-"):  # the staging folder's temporary name
        where = folder.parent
    cause = error.strerror or str(error)
    return f"cannot write {where} ({cause}); {_OS_ADVICE.get(error.errno, 'check that path')}"


def _writing(error: OSError, staging: Path) -> bool:
    """Whether an error of a run's body comes from writing its output: a full or read-only disk, or a path in the
    staging folder."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    return error.filename is not None and Path(os.path.abspath(error.filename)).is_relative_to(staging.absolute())


def _failed_run(error: OSError, output_dir: str, staging: Path, main_process: bool) -> RunStopped:
    """The one line for a run that failed to write its staging folder, which is left complete or removed: a
    complete checkpoint stays, to resume from; without one nothing of the run is worth keeping."""
    from .trainer import latest_checkpoint  # the trainer pulls in torch and transformers; only a failed run needs it

    checkpoint = latest_checkpoint(staging)
    if checkpoint is not None:
        then = f"{checkpoint} is kept: then run the same command with --resume_from_checkpoint true"
    else:
        if main_process:
            _remove_owned(staging)
        then = "nothing of this run was kept: then run the same command again"
    return RunStopped(f"--output_dir {output_dir}: the run stopped, {_os_problem(error, staging)}; {then}.")


def check_output_dir(output_dir: str, config: dict, overwrite: bool, record_file: str = RUN_FILE) -> None:
    """Refuse an `output_dir` that holds a different run (or anything else) unless `overwrite`; reads only.

    The same settings may be run again: the new run replaces the old one when it is published.
    """
    target = Path(output_dir)
    if not target.exists():
        return
    if not target.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file; choose a folder.")
    if overwrite:
        return
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


def _refuse_to_replace_foreign_entries(output_dir: str, record_file: str) -> None:
    """A run's folder is replaced when the new run is published: refuse, naming them, when it holds anything no run
    wrote (a user's notes, an evaluation of their own), since replacing it would delete them."""
    target = Path(output_dir)
    if not (target.is_dir() and (_owned(target) or (target / record_file).is_file())):
        return  # nothing to replace, or a folder open_staging refuses as not the project's
    foreign = foreign_entries(target)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(
            f"--output_dir {output_dir} holds {shown}, which no run wrote there; a run never deletes what it did "
            "not write, even with --overwrite true: move them out of the folder or choose another --output_dir."
        )


def foreign_entries(folder: Path) -> list[str]:
    """The entries of a run's folder that no run wrote: those its marker's list of written files lacks (or, in a
    folder without that list, those not named like a run's outputs); folders end with `/`."""
    try:
        written = json.loads((folder / MARKER_FILE).read_text()).get("files")
    except (OSError, ValueError, AttributeError):  # no marker, or one this project did not write
        written = None
    written = set(RUN_OUTPUTS if written is None else written) | {MARKER_FILE, LOCK_FILE}
    return sorted(
        entry.name + ("/" if entry.is_dir() else "") for entry in folder.iterdir() if entry.name not in written
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
    try:
        (fresh / MARKER_FILE).write_text(json.dumps({"created_by": "zerosiam-hf", "config": config}, default=str))
        _write_lock(fresh / LOCK_FILE)
    except BaseException:  # a full disk: no half-made folder stays behind
        shutil.rmtree(fresh, ignore_errors=True)
        raise
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
    from .trainer import latest_checkpoint  # the trainer pulls in torch and transformers; only this message needs it

    how = (
        "resume it with --resume_from_checkpoint true or start over with --overwrite true"
        if latest_checkpoint(staging)
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
    """Move a finished run from its staging folder to `output_dir`, replacing what was there only now.

    The marker lists what the run wrote, so that replacing the folder later deletes exactly that.
    """
    target = Path(output_dir)
    marker = json.loads((staging / MARKER_FILE).read_text())
    marker["files"] = sorted(set(os.listdir(staging)) - {LOCK_FILE})
    write_json(staging / MARKER_FILE, marker)
    if target.exists():
        retired = _retired_path(output_dir)
        _remove_written(retired)
        target.rename(retired)
        staging.rename(target)
        _remove_written(retired)
    else:
        staging.rename(target)
    (target / LOCK_FILE).unlink(missing_ok=True)


def _remove_written(folder: Path) -> None:
    """Delete what runs wrote in a replaced output folder, and the folder once nothing else is left in it; anything
    else (a file a user added while the run went on; check_output_dir refused those there before) stays."""
    if not folder.exists():
        return
    if not _owned(folder) and not any((folder / name).is_file() for name in RUN_OUTPUTS):
        _refuse_foreign(folder)
    foreign = set(foreign_entries(folder))
    for entry in folder.iterdir():  # the marker too: a folder left holding a user's files is no longer the project's
        if entry.name + ("/" if entry.is_dir() else "") in foreign:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if foreign:
        logger.warning("kept %s in %s: no run wrote them; move them away.", ", ".join(sorted(foreign)), folder)
    else:
        shutil.rmtree(folder)
