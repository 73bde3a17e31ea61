"""Command-line plumbing shared by the scripts: YAML configs with flag overrides, and one-line errors."""

import argparse
import functools
import os
import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from .errors import NotOneRun, RunStopped, UsageError
from .invocation import redacted


class _OneLineParser(HfArgumentParser):
    # A malformed flag (`--n abc`) is reported like every other usage error: one line, status 2, no usage block.
    def error(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping."""

    def __init__(self, key, lines: tuple[int, int]):
        super().__init__(f"{key} is given twice (lines {lines[0]} and {lines[1]})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping, where `yaml.safe_load` keeps the last one silently
    (`dataset: my.jsonl` then `dataset: gsm8k` would run on GSM8K)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if first != key_node.start_mark.line + 1:
                raise DuplicateKeyError(key, (first, key_node.start_mark.line + 1))
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, what: str):
    """The values of the YAML file `path`; a key given twice in one mapping, or malformed YAML, is one line that starts
    with `what` (the flag or the kind of file) and says where."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except DuplicateKeyError as error:
        raise UsageError(f"{what}: {error}; keep one.") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)  # PyYAML's own message adds an excerpt over several lines
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise UsageError(f"{what}: not valid YAML ({problem}{where}).") from None


def parse_args(dataclass_types: tuple, argv: list[str] | None = None) -> tuple:
    """Parse dataclasses from `--config file.yaml` (flat keys) overridden by command-line flags."""
    parser = _OneLineParser(dataclass_types)
    parser.add_argument("--config", default=None, help="YAML file of defaults; command-line flags override it.")
    argv = sys.argv[1:] if argv is None else argv
    # `--config` is read on its own first: the full parser would stop at a required flag the file may provide.
    config_finder = argparse.ArgumentParser(add_help=False)
    config_finder.add_argument("--config", default=None)
    config_path = config_finder.parse_known_args(argv)[0].config
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            raise UsageError(f"--config {config_path}: no such file.")
        values = read_yaml(path, f"--config {config_path}")
        if values is None:
            raise UsageError(f"--config {config_path}: the file is empty; give option names and values (name: value).")
        if not isinstance(values, dict):
            raise UsageError(
                f"--config {config_path}: expected a mapping of option names to values (name: value), "
                f"got a {type(values).__name__}."
            )
        if "config" in values:  # read only from the command line: one file gives the defaults, never a chain
            raise UsageError(
                f"--config {config_path}: a config cannot name another one (config: {values['config']}); copy its "
                "options into this file, or pass that file as --config."
            )
        actions = {action.dest: action for action in parser._actions}
        unknown = sorted(str(name) for name in values if name not in actions)
        if unknown:
            raise UsageError(f"--config {config_path}: unknown option(s) {', '.join(unknown)}; see --help.")
        parser.set_defaults(**{name: _typed(actions[name], value, config_path) for name, value in values.items()})
        # A value from the file satisfies a required flag; argparse checks required flags against argv only.
        for name in values:
            actions[name].required = False
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:  # transformers' own message lists them as given: a token among them would be printed
        raise UsageError(f"unknown option(s): {' '.join(redacted(unknown))}; see --help for this command's options.")
    # The trailing namespace holds `--config` itself.
    return tuple(parsed[: len(dataclass_types)])


def _typed(action, value, config_path: str):
    """A YAML value as the flag would give it: a scalar for a flag that takes a list becomes a one-element list
    (`lora_target_modules: q_proj` as `--lora_target_modules q_proj`), and a value for a numeric flag is checked
    against its type, since argparse converts string defaults only (`lora_r: [4]` or `lora_r: 4.5` would otherwise
    reach the config as a list or a float). Other flags (some take a string or a list, such as report_to) keep their
    YAML value."""
    if action.nargs in ("+", "*") and value is not None and not isinstance(value, list):
        value = [value]
    if action.type not in (int, float) or value is None:
        return value
    if isinstance(value, list) != (action.nargs in ("+", "*")):
        expected = "a list" if action.nargs in ("+", "*") else "one value"
        raise UsageError(f"--config {config_path}: {action.dest} takes {expected}, got {value!r}.")
    try:
        return [action.type(str(v)) for v in value] if isinstance(value, list) else action.type(str(value))
    except ValueError:
        raise UsageError(f"--config {config_path}: {action.dest}: invalid value {value!r}; see --help.") from None


def exits_cleanly(main):
    """Turn the errors a user can fix into one line on stderr and exit status 2, instead of a traceback; a run that
    stopped early (`RunStopped`) prints its one line and exits with its own status.

    Set ZEROSIAM_DEBUG=1 to get the traceback back.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (ValueError, FileNotFoundError, PermissionError) as error:
            if os.environ.get("ZEROSIAM_DEBUG"):
                raise
            if not isinstance(error, NotOneRun) or os.environ.get("RANK", "0") == "0":
                print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except RunStopped as stop:
            print(f"error: {stop}", file=sys.stderr)
            sys.exit(stop.exit_code)

    return wrapper


def console_entry(main):
    """A console-script entry point for a command's `main`: the process exits with status 0 when `main` returns,
    whatever it returns (the run's record is for callers in Python)."""

    @functools.wraps(main)
    def entry() -> None:
        main()

    return entry
