"""How this process was started, so that the commands a run suggests (resume it, evaluate its adapter, launch it the
way that works) can be pasted as they are: the same launcher with its own flags (`accelerate launch --multi_gpu ...`),
console command or script."""

import dataclasses
import os
import shlex
import shutil
from pathlib import Path

from .records import REDACTED, is_secret


_COMMANDS = Path(__file__).resolve().parent / "commands"
_LAUNCHERS = ("accelerate.commands.accelerate_cli", "accelerate.commands.launch")  # python -m <module> launch ...


def _parent_command() -> list[str]:
    """The parent process's command line (Linux's /proc), or [] where it cannot be read."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [word.decode(errors="replace") for word in raw.split(b"\0") if word]


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _accelerate_launch(script: str) -> list[str] | None:
    """`accelerate launch <its flags> <script>` when `accelerate launch` started this process, else None.

    accelerate starts the script as a child (torchrun-style launches too: the launcher's agent runs in its process),
    so the parent's command line holds the launcher's flags as the user typed them."""
    parent = _parent_command()
    start = next((i for i, word in enumerate(parent) if Path(word).name == "accelerate" or word in _LAUNCHERS), None)
    if start is None:
        return None
    rest = parent[start + 1 :]
    if rest and rest[0] == "launch":
        rest = rest[1:]
    module = f"zerosiam_hf.commands.{Path(script).stem}" if _in_commands(script) else None
    for i, word in enumerate(rest):
        if word == script or word == module or (not word.startswith("-") and _same_file(word, script)):
            return ["accelerate", "launch", *rest[: i + 1]]
    return None


def _in_commands(script: str) -> bool:
    return _same_file(Path(script).parent, _COMMANDS)


def launcher(script: str) -> list[str]:
    """The words that started this command before its own flags, given its `sys.argv[0]`."""
    launched = _accelerate_launch(script)
    if launched is not None:
        return launched
    name = Path(script).name
    if name.startswith("zerosiam-"):  # a console command: its name when the shell finds this one by it
        found = shutil.which(name)
        return [name] if found and _same_file(found, script) else [script]
    if _in_commands(script):
        return ["python", "-m", f"zerosiam_hf.commands.{Path(script).stem}"]
    return ["python", script]


def without_flag(argv: list[str], flag: str) -> list[str]:
    """`argv` without `flag` and its value (given as `flag value` or `flag=value`)."""
    out, skip = [], False
    for item in argv:
        if skip or item.startswith(f"{flag}="):
            skip = False
            continue
        if item == flag:
            skip = True
            continue
        out.append(item)
    return out


def _missing(argv: list[str], extra: tuple[str, ...]) -> list[str]:
    """The flag-value pairs of `extra` whose flag `argv` does not give."""
    pairs = zip(extra[::2], extra[1::2])
    return [word for flag, value in pairs if flag not in argv for word in (flag, value)]


def with_flags(command: list[str], *extra: str, env: str = "") -> str:
    """`command` started the way it was, with the `extra` flags it lacks (and an environment assignment in front)."""
    words = shlex.join([*launcher(command[0]), *command[1:], *_missing(command[1:], extra)])
    return f"{env} {words}" if env else words


def torchrun_command(command: list[str], processes: int, *extra: str) -> str:
    """`command` (a `sys.argv`) without a Trainer `--fsdp` option, started by torchrun on `processes` processes, with
    the `extra` flags it lacks."""
    script, argv = command[0], without_flag(command[1:], "--fsdp")
    start = [script] if script.endswith(".py") else ["-m", "zerosiam_hf.commands.adapt"]
    return shlex.join(["torchrun", "--nproc_per_node", str(processes), *start, *argv, *_missing(argv, extra)])


def redacted(argv: list[str]) -> list[str]:
    """`argv` with the value of every secret flag (`--hub_token hf_...` or `--hub_token=hf_...`) replaced by
    <redacted>, to be recorded or printed."""
    out, value_is_secret = [], False
    for item in argv:
        flag, equals, _ = item.partition("=")
        secret_flag = flag.startswith("--") and is_secret(flag)
        if value_is_secret:
            out.append(REDACTED)
        elif secret_flag and equals:
            out.append(f"{flag}={REDACTED}")
        else:
            out.append(item)
        value_is_secret = secret_flag and not equals and not value_is_secret
    return out


def resume_command(command: list[str]) -> str:
    """The command line that was run (`command` is its `sys.argv`), started the same way, with
    `--resume_from_checkpoint true` in place of any such flag it had; secrets are <redacted>."""
    argv = without_flag(redacted(command[1:]), "--resume_from_checkpoint")
    return shlex.join([*launcher(command[0]), *argv, "--resume_from_checkpoint", "true"])


def same_command(command: list[str]) -> str:
    """The command line that was run (`command` is its `sys.argv`), started the same way, to paste again; secrets are
    <redacted>."""
    return shlex.join([*launcher(command[0]), *redacted(command[1:])])


def sibling_command(script: str, name: str) -> list[str]:
    """How to start the command `name` (e.g. evaluate) the way this one (`sys.argv[0]`) was started, without a
    launcher: the script beside it, the `python -m` module, or the console command."""
    path = Path(script)
    if _in_commands(script):
        return ["python", "-m", f"zerosiam_hf.commands.{name}"]
    if path.suffix == ".py" and path.with_name(f"{name}.py").is_file():
        return ["python", str(path.with_name(f"{name}.py"))]
    console = f"zerosiam-{name.replace('_', '-')}"
    if path.name.startswith("zerosiam-") and not shutil.which(path.name):
        return [str(path.with_name(console))]
    return [console]


def changed_flags(values, defaults=None) -> list[str]:
    """Flags for the fields of the dataclass `values` that differ from `defaults` (an instance of the same class) or,
    without one, from the fields' defaults."""
    flags = []
    for spec in dataclasses.fields(values):
        value = getattr(values, spec.name)
        if defaults is not None:
            default = getattr(defaults, spec.name)
        elif spec.default is not dataclasses.MISSING:
            default = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:
            default = dataclasses.MISSING
        if value == default or value is None:
            continue
        words = value if isinstance(value, (list, tuple)) else [value]
        flags += [f"--{spec.name}", *(str(word).lower() if isinstance(word, bool) else str(word) for word in words)]
    return flags
