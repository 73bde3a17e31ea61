"""The shipped YAML configs parse into the scripts' arguments, and every model alias resolves."""

from pathlib import Path

import pytest
import yaml

from zerosiam_hf.cli import parse_args
from zerosiam_hf.config import ZeroSiamConfig
from zerosiam_hf.data import DataArguments
from zerosiam_hf.modeling import MODEL_CONFIG_DIR, ModelArguments, available_aliases, resolve_model


CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_run_config_parses_and_flags_override(path, tmp_path):
    from adapt import AdaptArguments
    from compare import CompareArguments

    values = yaml.safe_load(path.read_text())
    # A config that lists methods is compare.py's; the others are adapt.py's.
    script_args = CompareArguments if "methods" in values else AdaptArguments
    argv = ["--config", str(path), "--output_dir", str(tmp_path / "out"), "--method", "tent"]
    model_args, data_args, _, args = parse_args((ModelArguments, DataArguments, script_args, ZeroSiamConfig), argv)
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
        assert spec["name_or_path"].count("/") == 1, f"{MODEL_CONFIG_DIR / alias}.yaml: name_or_path is no hub id"
