"""The shipped YAML configs parse into the scripts' arguments, and every model alias resolves."""

import sys
import types
from pathlib import Path

import pytest
import yaml

from zerosiam_hf import modeling
from zerosiam_hf.cli import parse_args
from zerosiam_hf.commands.compare import CompareArguments
from zerosiam_hf.config import ZeroSiamConfig
from zerosiam_hf.data import DataArguments
from zerosiam_hf.modeling import SHIPPED_MODELS, ModelArguments, available_aliases, resolve_model
from zerosiam_hf.staging import OutputArguments


CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_run_config_parses_and_flags_override(path, tmp_path):
    values = yaml.safe_load(path.read_text())
    # A config that lists methods is compare.py's; the others are adapt.py's.
    command_args = (CompareArguments, OutputArguments) if "methods" in values else (OutputArguments,)
    argv = ["--config", str(path), "--output_dir", str(tmp_path / "out"), "--method", "tent"]
    model_args, data_args, *_, args = parse_args((ModelArguments, DataArguments, *command_args, ZeroSiamConfig), argv)
    assert model_args.model == values["model"]
    assert args.learning_rate == values["learning_rate"]
    assert args.method == "tent"  # the flag wins over the file's `method`
    assert args.output_dir == str(tmp_path / "out")
    resolve_model(model_args.model)


def test_every_alias_names_a_source():
    assert "llama" in available_aliases()
    for alias in available_aliases():
        spec = resolve_model(alias)
        assert spec["alias"] == alias
        assert spec["name_or_path"].count("/") == 1, f"{SHIPPED_MODELS / alias}.yaml: name_or_path is no hub id"


def test_a_user_folder_adds_and_replaces_aliases(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("name_or_path: org/mine\n")
    (tmp_path / "qwen2.5-1.5b.yaml").write_text("name_or_path: org/other-qwen\n")
    monkeypatch.setenv("ZEROSIAM_MODELS_DIR", str(tmp_path))
    assert resolve_model("mine") == {"alias": "mine", "name_or_path": "org/mine"}
    assert resolve_model("qwen2.5-1.5b")["name_or_path"] == "org/other-qwen"  # the user's file wins
    assert {"mine", "llama"} <= set(available_aliases())


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (None, "$ZEROSIAM_MODELS_DIR={folder}/absent: no such folder; point it at a folder of <alias>.yaml files."),
        ({"mine.yaml": "- org/mine\n"}, "model alias file {folder}/mine.yaml: give at least `name_or_path: "),
        ({"mine.yaml": ""}, "model alias file {folder}/mine.yaml: give at least `name_or_path: "),
    ],
)
def test_a_bad_user_alias_is_one_line(tmp_path, monkeypatch, files, expected):
    folder = tmp_path if files else tmp_path / "absent"
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    monkeypatch.setenv("ZEROSIAM_MODELS_DIR", str(folder))
    with pytest.raises(ValueError) as error:
        resolve_model("mine")
    assert str(error.value).startswith(expected.format(folder=tmp_path)) and "\n" not in str(error.value)


def test_alias_files_ship_inside_the_package():
    assert (SHIPPED_MODELS / "llama.yaml").is_file()
    assert not (Path(__file__).resolve().parent.parent / "configs" / "models").exists()


def test_a_missing_gguf_package_names_its_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("ZEROSIAM_CACHE", str(tmp_path))
    real = modeling.importlib.util.find_spec
    monkeypatch.setattr(modeling.importlib.util, "find_spec", lambda name: None if "gguf" in name else real(name))
    with pytest.raises(
        ValueError, match=r"run `bash scripts/setup.sh --gemma \(or pip install 'zerosiam-hf\[gemma\]'\)`"
    ):
        modeling.materialize_gguf(resolve_model("gemma"))


def test_a_gguf_that_cannot_be_assembled_is_one_line(monkeypatch, tmp_path):
    def assemble(path):  # what the chunk package raises when a part is missing
        raise FileNotFoundError("Missing chunk files: part03")

    monkeypatch.setenv("ZEROSIAM_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "fake_chunks", types.SimpleNamespace(assemble=assemble))
    monkeypatch.setattr(modeling.importlib.util, "find_spec", lambda name: types.SimpleNamespace(origin=__file__))
    spec = {"alias": "chunked", "gguf_package": "fake_chunks", "gguf_file": "m.gguf", "gguf_assemble": True}
    with pytest.raises(
        ValueError, match=r"model 'chunked': its GGUF could not be assembled from fake_chunks \(Missing"
    ):
        modeling.materialize_gguf(spec)
