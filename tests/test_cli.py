"""`parse_args`: a YAML file under `--config` gives values (required ones included) that flags override, and a file
that cannot be used is reported in one line naming the file and what is wrong with it."""

from dataclasses import dataclass, field

import pytest

from zerosiam_hf.cli import parse_args
from zerosiam_hf.commands import make_synthetic
from zerosiam_hf.errors import UsageError


@dataclass
class Arguments:
    output: str = field(metadata={"help": "Required: no default."})
    n: int = field(default=3, metadata={"help": "A count."})


def test_a_yaml_value_satisfies_a_required_field(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("output: out.jsonl\nn: 5\n")
    (args,) = parse_args((Arguments,), ["--config", str(config)])
    assert args.output == "out.jsonl" and args.n == 5
    (args,) = parse_args((Arguments,), ["--config", str(config), "--output", "flag.jsonl"])
    assert args.output == "flag.jsonl"  # the flag wins over the file


def test_a_required_field_missing_from_both_is_still_an_error(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("n: 5\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_args((Arguments,), ["--config", str(config)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: the following arguments are required: --output"


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("", "the file is empty; give option names and values (name: value)."),
        ("# only a comment\n", "the file is empty; give option names and values (name: value)."),
        ("- output\n- n\n", "expected a mapping of option names to values (name: value), got a list."),
        ("out.jsonl\n", "expected a mapping of option names to values (name: value), got a str."),
        ("output: x\noutptu: y\n", "unknown option(s) outptu; see --help."),
        ("output: [x\n", "not valid YAML (expected ',' or ']', but got '<stream end>' at line 2, column 1)."),
        # yaml.safe_load keeps the last of two equal keys: the run would silently use another dataset.
        ("output: x\nn: 5\noutput: y\n", "output is given twice (lines 1 and 3); keep one."),
        (
            "output: x\nconfig: other.yaml\n",
            "a config cannot name another one (config: other.yaml); copy its options into this file, or pass that "
            "file as --config.",
        ),
    ],
)
def test_a_config_that_cannot_be_used_names_the_file(tmp_path, yaml_text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    with pytest.raises(UsageError) as error:
        parse_args((Arguments,), ["--config", str(config)])
    assert str(error.value) == f"--config {config}: {expected}"
    assert "\n" not in str(error.value)


@dataclass
class ListArguments:
    modules: list[str] = field(default_factory=lambda: ["a", "b"], metadata={"help": "A list flag."})


@pytest.mark.parametrize(
    ("yaml_text", "expected"), [("modules: q_proj\n", ["q_proj"]), ("modules: [q, v]\n", ["q", "v"])]
)
def test_a_yaml_scalar_for_a_list_flag_is_a_one_element_list(tmp_path, yaml_text, expected):
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text)
    (from_file,) = parse_args((ListArguments,), ["--config", str(config)])
    (from_flag,) = parse_args((ListArguments,), ["--modules", *expected])
    assert from_file.modules == from_flag.modules == expected


def test_make_synthetic_takes_its_output_from_the_config(tmp_path):
    out = tmp_path / "base.jsonl"
    config = tmp_path / "synthetic.yaml"
    config.write_text(f"output: {out}\nn: 2\n")
    make_synthetic.main(["--config", str(config)])
    assert len(out.read_text().splitlines()) == 2
