"""Output folders that appear whole or not at all: a run writes into `<output_dir>.partial`, locked against a second
run, and `publish` moves it into place when it is finished."""

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RunStopped
from .records import RUN_FILE, changed_settings, matching_record, write_json


logger = logging.getLogger(__name__)


# Written into every folder this project creates: only folders holding it are ever deleted or replaced, and of a
# published folder only the files its manifest (written into it at publish) lists, unchanged since.
MARKER_FILE = ".zerosiam-hf"
# pid and host of the run writing a staging folder.
LOCK_FILE = ".lock"
# What a checkpoint needs beyond the Trainer's own files to resume a run exactly.
RUN_STATE_FILE = "zerosiam_state.json"
# The advice after a file-system error, by its errno: what makes the next try work.
_OS_ADVICE = {
    errno.ENOSPC: "free space on that disk or choose another --output_dir",
    errno.EDQUOT: "free space within your quota or choose another --output_dir",
    errno.EROFS: "choose an --output_dir on a file system you can write to",
    errno.EACCES: "choose an --output_dir you can write to, or change that folder's permissions",
    errno.EPERM: "choose an --output_dir you can write to, or change that folder's permissions",
    errno.EEXIST: "a part of that path is a file, not a folder; choose another --output_dir",
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another --output_dir",
    errno.EBUSY: "it is a mount point, which cannot be replaced; choose a folder inside it as --output_dir",
    errno.EXDEV: "it is on another file system than its parent folder (a mount point); choose a folder inside it as "
    "--output_dir",
}


@dataclass
class OutputArguments:
    """What a command may do to the folder it writes (every command that writes a folder takes these)."""

    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace an output_dir that holds a different run, and drop what an interrupted run left in "
            "<output_dir>.partial; only folders written by zerosiam-hf are ever replaced or dropped, and a file no "
            "run wrote there (your notes), or one changed since a run wrote it, is never deleted: such a folder is "
            "refused."
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
    inputs: dict[str, str | None] | None = None,
) -> Iterator[Path]:
    """Write a folder whole or not at all: refuse an `output_dir` that holds a different run or files that are not
    the project's, open and lock its staging folder, yield it to be written, publish it to `output_dir` when the
    block ends without an error, and release the lock in every case (an interrupted run's files stay in the staging
    folder, to resume or drop).

    `inputs` maps the flags of what the run reads to their paths ({"--model": ..., "--dataset": ...}): an
    `output_dir` that is, holds or lies inside one of them is refused, since replacing it would delete it.

    Over several processes pass accelerate's `state`: the main process opens, publishes and closes, and all of them
    wait for each other around those steps (a process still reading the staging folder when the main one publishes
    it would find it gone).
    """
    main_process = state is None or state.is_main_process
    _check_output_path(output_dir)
    _check_inputs(output_dir, inputs or {})
    _check_not_part_of_an_output(output_dir)
    staging = staging_path(output_dir)
    try:  # nothing is written before open_staging: a path through a file, a read-only or full disk
        # First what the run could not replace even with --overwrite true, so that every later advice to pass it holds.
        _refuse_files_not_ours(Path(output_dir), f"--output_dir {output_dir}")
        _refuse_files_not_ours(_retired_path(output_dir), str(_retired_path(output_dir)))
        check_output_dir(output_dir, config, overwrite, record_file=record_file)
        if main_process:
            open_staging(output_dir, config, overwrite, resume=resume)
    except OSError as error:
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
        except ValueError:
            # Refused partway (a run's lengths or data): without finished work in it the staging folder is worth
            # nothing, and left behind it would refuse the corrected command as an interrupted run of other settings.
            if main_process and not _holds_finished_work(staging):
                _remove_owned(staging)
            raise
        if state is not None:  # no process still reads the staging folder (the adapter's finiteness) when it moves
            state.wait_for_everyone()
        if main_process:
            try:
                publish(staging, output_dir)
            except OSError as error:
                problem = _os_problem(error, staging)
                raise RunStopped(
                    f"--output_dir {output_dir}: the finished run could not be published ({problem}); it is whole in "
                    f"{staging}: {_after_failed_publish(error, output_dir, staging)}."
                ) from None
        if state is not None:
            state.wait_for_everyone()
    finally:
        if main_process:
            close_staging(staging)


def _after_failed_publish(error: OSError, output_dir: str, staging: Path) -> str:
    """What to do with a finished run that could not be renamed into place."""
    if error.errno in (errno.EBUSY, errno.EXDEV):  # a mount point, which no rerun could replace either
        inside = Path(output_dir) / "run"
        return f"move it into {output_dir} yourself (mv {staging} {inside}) and pass --output_dir {inside} from now on"
    old = " (after moving the old one away)" if Path(output_dir).exists() else ""
    return (
        f"once that is fixed, rename it to {output_dir} yourself{old}, or run the command again with --overwrite true"
    )


def _check_output_path(output_dir: str) -> None:
    """Refuse an `output_dir` that a run cannot write beside and rename into place: a symbolic link (the rename
    would move the link, and the old run's files would be deleted through it) or a mount point (which cannot be
    renamed); reads only."""
    target = _named(output_dir)
    if target.is_symlink():
        raise ValueError(
            f"--output_dir {output_dir} is a symbolic link, which a run would rename instead of the folder it points "
            f"to; pass that folder: --output_dir {os.path.realpath(output_dir)}."
        )
    if os.path.ismount(target):
        raise ValueError(
            f"--output_dir {output_dir} is a mount point, which a run cannot replace (it renames its folder into "
            f"place); choose a folder inside it, e.g. --output_dir {target / 'run'}."
        )


def _check_not_part_of_an_output(output_dir: str) -> None:
    """Refuse an `output_dir` inside a published folder whose manifest lists files under it (a run of a published
    comparison): a run there would change that folder's files under its tables, and the folder would then refuse its
    own command as holding changed files."""
    target = Path(os.path.realpath(output_dir))
    for parent in target.parents:
        listed = (_marker(parent) or {}).get("sha256")
        inside = target.relative_to(parent).as_posix() + "/"
        if isinstance(listed, dict) and any(path.startswith(inside) for path in listed):
            raise ValueError(
                f"--output_dir {output_dir} is part of {parent}, which a command of this project published; a run "
                f"there would change it: choose a folder outside {parent}, or run the command that made it again."
            )


def _check_inputs(output_dir: str, inputs: dict[str, str | None]) -> None:
    """Refuse an `output_dir` that is, holds or lies inside one of the run's `inputs` ({flag: path}): replacing it
    would delete what the run reads (an adapter evaluated into its own folder, a model adapted into its export)."""
    target = Path(os.path.realpath(output_dir))
    for flag, value in inputs.items():
        if value is None or not os.path.lexists(value):  # an alias or a hub id: nothing on disk to write over
            continue
        source = Path(os.path.realpath(value))
        if source == target:
            relation = "is the same folder as"
        elif source.is_relative_to(target):
            relation = "holds"
        elif target.is_relative_to(source):
            relation = "is inside"
        else:
            continue
        raise ValueError(
            f"--output_dir {output_dir} {relation} {flag} {value}; a run never writes where it reads its inputs: "
            "choose another --output_dir."
        )


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
    complete checkpoint stays, to resume from, and so do the runs finished inside it (a comparison's, each a folder
    with its marker), to be reused; without either nothing of the run is worth keeping."""
    checkpoint = latest_checkpoint(staging)
    if checkpoint is not None:
        then = f"{checkpoint} is kept: then run the same command with --resume_from_checkpoint true"
    elif _holds_finished_work(staging):
        then = f"the runs it finished are kept in {staging}: then run the same command again, which reuses them"
    else:
        if main_process:
            _remove_owned(staging)
        then = "nothing of this run was kept: then run the same command again"
    return RunStopped(f"--output_dir {output_dir}: the run stopped, {_os_problem(error, staging)}; {then}.")


def latest_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest checkpoint in `folder` that was written to its end (a kill can cut the last one short)."""
    # transformers pulls in torch: imported here, where a checkpoint is looked for, not where a folder is staged
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    complete = [
        path
        for path in Path(folder).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.name.rsplit("-", 1)[1].isdigit()
        and (path / TRAINER_STATE_NAME).is_file()
        and (path / RUN_STATE_FILE).is_file()
    ]
    return str(max(complete, key=lambda path: int(path.name.rsplit("-", 1)[1]))) if complete else None


def checkpoint_to_resume(value: str | bool | None, folder: str | os.PathLike) -> str | None:
    """The checkpoint `--resume_from_checkpoint` names: `true` (or True) for the newest complete one in `folder`."""
    if not value:
        return None
    if value is True or str(value).lower() == "true":
        checkpoint = latest_checkpoint(folder)
        if checkpoint is None:
            raise ValueError(f"--resume_from_checkpoint true: {folder} holds no complete checkpoint to resume from.")
        return checkpoint
    if not Path(value).is_dir():
        raise ValueError(f"--resume_from_checkpoint {value}: no such folder; give a checkpoint-<step> folder or true.")
    return str(value)


def copy_folder(source: Path, target: Path, copy=None) -> None:
    """Copy the folder `source` into `target` file by file (with `copy`, default shutil.copy2). shutil.copytree
    gathers every failure into one shutil.Error that names no file and has no errno; here the first one (a full disk)
    is raised as the OSError naming its file, which `staged_output` turns into one line."""
    copy = copy or shutil.copy2
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):  # a folder sorts before what it holds
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(exist_ok=True)
        else:
            copy(path, destination)


def _holds_finished_work(staging: Path) -> bool:
    """Whether a staging folder holds what a rerun goes on from: a complete checkpoint, or runs finished inside it
    (a comparison's, each a folder with its marker)."""
    if latest_checkpoint(staging) is not None:
        return True
    return any(marker.parent != staging for marker in staging.rglob(MARKER_FILE))


def check_output_dir(output_dir: str, config: dict, overwrite: bool, record_file: str = RUN_FILE) -> None:
    """Refuse an `output_dir` that holds a different run (or anything else) unless `overwrite`; reads only.

    The same settings may be run again: the new run replaces the old one when it is published. Whether the folder
    may be replaced at all (files that are not the project's) is staged_output's check, made before this one, so
    that the advice to pass --overwrite true holds where this one gives it.
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


def _refuse_files_not_ours(folder: Path, name: str) -> None:
    """A run's folder is replaced when the new run is published: refuse, naming them, when `folder` (called `name`)
    holds files that are not the project's to delete (`_sort_files`), whatever --overwrite says."""
    if not folder.is_dir():
        return
    ours, unknown, changed = _sort_files(folder)
    if not unknown and not changed:
        return
    marker = _marker(folder)
    shown = _shown(_entries(unknown, ours + changed))
    if marker is None:
        held = f"{name} was not made by zerosiam-hf (it holds no {MARKER_FILE}) and holds {shown}"
    elif not _lists_files(marker):
        held = (
            f"{name} holds {shown}, which its {MARKER_FILE} does not list (it was written before runs listed their "
            "files), so they cannot be told from yours"
        )
    else:
        parts = [f"{shown}, which no run wrote there"] if unknown else []
        if changed:
            them = "it" if len(changed) == 1 else "them"
            parts.append(f"{_shown(changed)}, which changed since the run wrote {them}")
        held = f"{name} holds " + ", and ".join(parts)
    raise ValueError(
        f"{held}; a run never deletes what it did not write, even with --overwrite true: move them out of the folder "
        "or choose another --output_dir."
    )


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _not_ours(ours: list[str], unknown: list[str], changed: list[str]) -> list[str]:
    return sorted(_entries(unknown, ours + changed) + changed)


def _entries(unknown: list[str], known: list[str]) -> list[str]:
    """Files no run wrote, named for a user: those inside a folder of which no run wrote anything, by that folder."""
    known_tops = {Path(path).parts[0] for path in known}
    return sorted(
        {
            path if len(Path(path).parts) == 1 or Path(path).parts[0] in known_tops else Path(path).parts[0] + "/"
            for path in unknown
        }
    )


def _sort_files(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """(ours, unknown, changed): the files in `folder` (paths relative to it) that a run of this project wrote there
    and that are unchanged since, those no run wrote there, and those a run wrote that changed since (a user's notes
    appended to its README.md).

    The marker's manifest alone says what a run wrote: each file with its hash, or in a marker written before the
    hashes (names of the top-level entries only) a file counts as unchanged while it is no newer than the marker,
    which publish wrote last. A folder without that list (no marker, or one from before runs listed their files)
    holds nothing of the project's: names cannot tell a run's files from a user's (a user's model folder holds a
    config.json and model.safetensors as an export does), and deleting by name once lost a user's model.
    """
    marker = _marker(folder) or {}
    hashes, names = marker.get("sha256"), marker.get("files")
    ours, unknown, changed = [], [], []
    for path in _files(folder):
        file = folder / path
        if path == LOCK_FILE and marker:  # a run's lock, left by a publish cut short
            written = same = True
        elif isinstance(hashes, dict):
            written = path in hashes
            same = written and _regular(file) and _sha256(file) == hashes[path]
        elif isinstance(names, list):
            written = Path(path).parts[0] in names
            same = written and file.lstat().st_mtime_ns <= (folder / MARKER_FILE).stat().st_mtime_ns
        else:
            written = same = False
        (ours if same else changed if written else unknown).append(path)
    return ours, unknown, changed


def _marker(folder: Path) -> dict | None:
    """The marker of a folder this project made, or None."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):  # none, or one this project did not write
        return None
    return marker if isinstance(marker, dict) else None


def opened_without_settings(output_dir: str) -> bool:
    """Whether `output_dir`'s staging folder was opened with no settings to match (by `compare --runs_only`
    processes, for the comparison that takes their runs over)."""
    marker = _marker(staging_path(output_dir))
    return marker is not None and marker.get("config") is None


def _lists_files(marker: dict) -> bool:
    return isinstance(marker.get("sha256"), dict) or isinstance(marker.get("files"), list)


def _files(folder: Path) -> list[str]:
    """Everything in `folder` but its marker and the folders themselves (an empty folder holds nothing to lose), as
    paths relative to it; a link to a folder is listed, not followed."""
    found = []

    def fail(error: OSError):  # a folder that cannot be read may hold a user's files: never skip it
        raise error

    for root, folders, files in os.walk(folder, onerror=fail):
        links = [name for name in folders if os.path.islink(os.path.join(root, name))]
        found += [os.path.relpath(os.path.join(root, name), folder) for name in files + links]
    return sorted(set(found) - {MARKER_FILE})


def _regular(path: Path) -> bool:
    return stat.S_ISREG(path.lstat().st_mode)  # not a link, nor a pipe that reading would block on


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def staging_path(output_dir: str) -> Path:
    """The folder a run writes into before `publish` moves it to `output_dir`."""
    target = _named(output_dir)
    return target.with_name(target.name + ".partial")


def _retired_path(output_dir: str) -> Path:
    target = _named(output_dir)
    return target.with_name(target.name + ".old")


def _named(output_dir: str) -> Path:
    """`output_dir` as a path, refused when it names no folder of its own (the staging folder is its sibling)."""
    if not str(output_dir):
        raise ValueError("--output_dir is empty; name the folder to write, e.g. --output_dir outputs/run.")
    target = Path(output_dir)
    if target.name in ("", ".."):  # `.`, `..`, `/`: a run writes beside its folder and renames it into place
        raise ValueError(
            f"--output_dir {output_dir} names no folder of its own, and a run writes its folder beside the one it "
            f"replaces; name a folder inside it, e.g. --output_dir {os.path.join(output_dir, 'run')}."
        )
    return target


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


def open_staging(output_dir: str, config: dict | None = None, overwrite: bool = False, resume: bool = False) -> Path:
    """Create and lock the staging folder of `output_dir`, or take over an interrupted run's one to `resume` it.

    Only one run writes an output folder at a time: a second one is refused while the first one's process lives.
    Folders this project did not make (no marker file) are never deleted: `<output_dir>.partial`, `.old`, and an
    `output_dir` to be replaced.
    """
    _check_output_path(output_dir)
    target, staging, retired = Path(output_dir), staging_path(output_dir), _retired_path(output_dir)
    if retired.exists() and not _owned(retired):
        _refuse_foreign(retired)
    if target.is_dir() and any(target.iterdir()) and not _owned(target):
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
        if latest_checkpoint(staging)
        else "it has no checkpoint to resume from: start over with --overwrite true, or move it away"
    )
    raise ValueError(f"--output_dir {output_dir}: {staging} holds an interrupted run{gone}; {how}.")


def _check_same_settings(staging: Path, config: dict | None, output_dir: str) -> None:
    """A run resumes only with the settings it was started with: anything else would mix two runs in one record."""
    started = json.loads((staging / MARKER_FILE).read_text()).get("config")
    if config is None or started is None:
        return
    changed = changed_settings(started, config)
    if changed:
        raise ValueError(
            f"--output_dir {output_dir}: the interrupted run in {staging} was started with other settings "
            f"({', '.join(changed)}); resume it with the flags it was started with, or pass --overwrite true to "
            "start over."
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

    The marker lists what the run wrote, each file with its hash, so that replacing the folder later deletes exactly
    that, and only while it is unchanged.
    """
    _check_output_path(output_dir)
    target = Path(output_dir)
    marker = json.loads((staging / MARKER_FILE).read_text())
    marker["files"] = sorted(set(os.listdir(staging)) - {LOCK_FILE})  # the top-level names, as earlier versions read
    written = [path for path in _files(staging) if path != LOCK_FILE and _regular(staging / path)]
    marker["sha256"] = {path: _sha256(staging / path) for path in written}
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
    """Delete the files a run wrote in a replaced output folder that are unchanged since, then the folder once
    nothing else is left in it; anything else (a file a user added or changed while the run went on; staged_output
    refused those there before) stays, and the folder, its marker gone, is no longer the project's."""
    if not folder.exists():
        return
    ours, unknown, changed = _sort_files(folder)
    for path in ours:
        (folder / path).unlink()
    (folder / MARKER_FILE).unlink(missing_ok=True)
    for root, folders, _ in os.walk(folder, topdown=False):  # the folders left empty, innermost first
        for name in folders:
            inner = os.path.join(root, name)
            if not os.path.islink(inner) and not os.listdir(inner):
                os.rmdir(inner)
    if unknown or changed:
        kept = ", ".join(_not_ours(ours, unknown, changed))
        logger.warning("kept %s in %s: no run wrote them, or they changed since; move them away.", kept, folder)
    else:
        folder.rmdir()
