"""Defects a probe found in what a run takes in and writes out, one test each: a model's own code run on a `y` from
stdin, a hub token written into the run's files, a resume from another run's checkpoint or from edited data, and
inputs that ended in a traceback."""

import io
import json
import shutil
import signal
import sys
from functools import partial
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from helpers import adapt_argv, assert_usage_error, flags, record_trainers
from transformers.integrations import integration_utils

from zerosiam_hf import invocation, pipeline
from zerosiam_hf.commands import adapt, evaluate
from zerosiam_hf.trainer import ZeroSiamTrainer


def no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the bad input was reported")


def stop_after_first_step(capsys, monkeypatch, argv: list[str]) -> str:
    """Run adapt.py in this process, SIGTERM it during its first step, and return what it printed on stderr; the
    run stops at that step's end with checkpoint-1 in its staging folder."""
    generate = ZeroSiamTrainer._generate

    def signalled(self, *args, **kwargs):
        if self.state.global_step == 0:
            signal.raise_signal(signal.SIGTERM)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(ZeroSiamTrainer, "_generate", signalled)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        adapt.main(argv)
    monkeypatch.setattr(ZeroSiamTrainer, "_generate", generate)
    assert exit_info.value.code == 128 + signal.SIGTERM
    return capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- 1. a model's code
CUSTOM_CODE = """
from pathlib import Path

Path({sentinel!r}).write_text("this model's code ran")

from transformers import LlamaConfig, LlamaForCausalLM


class CustomConfig(LlamaConfig):
    model_type = "custom_llama"


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
"""


def test_a_model_that_ships_code_is_refused_without_asking_and_its_code_never_runs(
    capsys, monkeypatch, tiny_model_dir, problems_file, tmp_path
):
    model_dir = tmp_path / "custom-model"
    shutil.copytree(tiny_model_dir, model_dir)
    sentinel = tmp_path / "SENTINEL"
    (model_dir / "custom_llama.py").write_text(CUSTOM_CODE.format(sentinel=str(sentinel)))
    config = json.loads((model_dir / "config.json").read_text())
    config["model_type"] = "custom_llama"  # a type transformers does not know: only the folder's code can load it
    config["auto_map"] = {
        "AutoConfig": "custom_llama.CustomConfig",
        "AutoModelForCausalLM": "custom_llama.CustomForCausalLM",
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    stdin = io.StringIO("y\n" * 3)  # what `echo y | adapt.py ...` gave transformers' "run the custom code?" prompt
    monkeypatch.setattr(sys, "stdin", stdin)
    output_dir = tmp_path / "run"

    line = assert_usage_error(
        capsys,
        partial(adapt.main, adapt_argv(str(model_dir), problems_file, output_dir)),
        f"--model {model_dir} ships its own Python code",
    )
    assert "--trust_remote_code true" in line
    assert not sentinel.exists()
    assert stdin.tell() == 0  # nothing was asked
    assert not output_dir.exists() and not output_dir.with_name("run.partial").exists()


# ------------------------------------------------------------------------------------------------------ 2. a secret
def test_a_hub_token_is_written_to_no_file_and_printed_nowhere(
    capsys, monkeypatch, tiny_model_dir, problems_file, tmp_path
):
    secret = "hf_SECRET123"
    output_dir = tmp_path / "run"
    argv = adapt_argv(tiny_model_dir, problems_file, output_dir, "--hub_token", secret, *flags(save_steps=1))
    trainers = record_trainers(monkeypatch)

    # stopped: the staging folder keeps a checkpoint (training_args.bin among its files), and the resume hint
    err = stop_after_first_step(capsys, monkeypatch, argv)
    assert "resume with: " in err and "--hub_token '<redacted>'" in err and secret not in err
    assert err.rstrip().endswith("(with your token in place of <redacted>)")
    staging = output_dir.with_name("run.partial")
    assert (staging / "checkpoint-1" / "training_args.bin").is_file()
    leaked = [str(path) for path in staging.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]
    assert not leaked

    adapt.main([*argv, "--resume_from_checkpoint", "true"])
    out, err = capsys.readouterr()
    assert secret not in out + err
    leaked = [str(path) for path in output_dir.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]
    assert not leaked
    record = json.loads((output_dir / "run.json").read_text())
    assert record["config"]["ZeroSiamConfig"]["hub_token"] == "<redacted>"
    assert record["command"][record["command"].index("--hub_token") + 1] == "<redacted>"
    assert torch.load(output_dir / "training_args.bin", weights_only=False).hub_token is None
    assert trainers[-1].args.hub_token == secret  # the run itself kept it, for a push


# ------------------------------------------------------------------------------------------- 3. another run's records
def test_a_checkpoint_of_other_settings_or_of_edited_data_is_refused(
    capsys, monkeypatch, tiny_model_dir, problems_file, tmp_path
):
    first = tmp_path / "first"
    argv = adapt_argv(tiny_model_dir, problems_file, first, *flags(save_steps=1))
    stop_after_first_step(capsys, monkeypatch, argv)
    checkpoint = first.with_name("first.partial") / "checkpoint-1"
    kept = {path: path.read_bytes() for path in checkpoint.rglob("*") if path.is_file()}

    # another output folder, other settings, the first run's checkpoint: its answers would pass for this run's
    other = tmp_path / "other"
    resumed_with_other_settings = flags(save_steps=1, learning_rate=1e-3, resume_from_checkpoint=checkpoint)
    other_argv = adapt_argv(tiny_model_dir, problems_file, other, *resumed_with_other_settings)
    line = assert_usage_error(
        capsys, partial(adapt.main, other_argv), f"--resume_from_checkpoint {checkpoint}: that run was made with other"
    )
    assert "settings (--learning_rate)" in line
    assert not other.exists() and not other.with_name("other.partial").exists()

    # the data file edited between the stop and the resume
    data = Path(problems_file)
    data.write_text(data.read_text().replace("Ann has 3 apples", "Ann has 5 apples"))
    line = assert_usage_error(
        capsys,
        partial(adapt.main, [*argv, "--resume_from_checkpoint", "true"]),
        f"--resume_from_checkpoint {checkpoint}: the data differs from what that run read (sha256 ",
    )
    assert {path: path.read_bytes() for path in checkpoint.rglob("*") if path.is_file()} == kept
    assert not first.exists()


# -------------------------------------------------------------------------------------------------- 4. tracebacks
@pytest.mark.parametrize(
    ("argv", "alias_file", "expected"),
    [
        (
            ["--model", "org/not-cached"],
            None,
            "--model org/not-cached: org/not-cached is not in the local hub cache and the hub is offline "
            "(HF_HUB_OFFLINE); download it first (`hf download org/not-cached`) or pass a local folder.",
        ),
        (["--push_to_hub", "true"], None, "--push_to_hub true: the hub is offline (HF_HUB_OFFLINE), so the run"),
        (
            ["--report_to", "wandb"],
            None,
            "--report_to wandb needs the package wandb, which is not installed or not usable here: pip install "
            "wandb, or pass another --report_to (none",
        ),
        (
            ["--model", "mine"],
            "name_or_path: [org/mine\n",
            "model alias file {folder}/mine.yaml: not valid YAML (expected ',' or ']', but got '<stream end>' at "
            "line 2, column 1).",
        ),
        (
            ["--model", "mine"],
            "name_or_path: org/mine\nname_or_path: org/other\n",
            "model alias file {folder}/mine.yaml: name_or_path is given twice (lines 1 and 2); keep one.",
        ),
    ],
    ids=["uncached-hub-model", "push-offline", "report-to-missing-package", "malformed-alias", "duplicate-alias-key"],
)
def test_inputs_that_ended_in_a_traceback_are_one_line_before_anything_loads(
    capsys, monkeypatch, tiny_model_dir, problems_file, tmp_path, argv, alias_file, expected
):
    monkeypatch.setattr(pipeline, "load_model_and_tokenizer", no_model)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(integration_utils, "is_wandb_available", lambda: False)
    aliases = tmp_path / "aliases"
    aliases.mkdir()
    if alias_file is not None:
        (aliases / "mine.yaml").write_text(alias_file)
    monkeypatch.setenv("ZEROSIAM_MODELS_DIR", str(aliases))
    output_dir = tmp_path / "run"
    call = partial(adapt.main, adapt_argv(tiny_model_dir, problems_file, output_dir, *argv))
    assert_usage_error(capsys, call, f"error: {expected.format(folder=aliases)}")
    assert not output_dir.exists() and not output_dir.with_name("run.partial").exists()


def test_a_token_flag_is_redacted_in_either_spelling():
    """The parser takes --hub-token for --hub_token, so the command line a record keeps hides both."""
    argv = ["adapt.py", "--hub-token", "hf_a", "--hub-token=hf_b", "--hub_token", "hf_c", "--max_new_tokens", "4"]
    assert invocation.redacted(argv) == [
        "adapt.py",
        "--hub-token",
        "<redacted>",
        "--hub-token=<redacted>",
        "--hub_token",
        "<redacted>",
        "--max_new_tokens",
        "4",
    ]


def test_an_unknown_option_is_one_line_that_never_prints_a_token(capsys, tiny_model_dir, tmp_path):
    """evaluate takes no --hub_token: transformers' refusal listed it with its value."""
    argv = ["--model", tiny_model_dir, "--output_dir", str(tmp_path / "eval"), "--hub_token", "hf_SECRET123"]
    assert_usage_error(capsys, partial(evaluate.main, argv), "unknown option(s): --hub_token <redacted>; see --help")
