"""The architecture matrix: tiny random models of each causal-LM family users adapt, built in code.

For each family: the logits the loss reads are the model's own at every position (soft-capped, scaled), the default
LoRA targets are the attention's linear layers, and Tent and ZeroSiam adapt online, save, reload with plain peft to
the same outputs and generate the same text merged as unmerged. docs/ARCHITECTURES.md holds the table.
"""

import json
from functools import partial

import pytest
import torch
from datasets import Dataset
from helpers import PROBLEMS, adapt_argv, assert_usage_error, make_tokenizer
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from zerosiam_hf import ZeroSiamConfig, ZeroSiamTrainer, build_adapted_model
from zerosiam_hf.checkers import NumericChecker
from zerosiam_hf.commands import adapt
from zerosiam_hf.data import build_prompts, gold_answers
from zerosiam_hf.generation import generate_completions, pad
from zerosiam_hf.losses import head_logits, head_loss, head_transform
from zerosiam_hf.modeling import check_head_input, lora_modules, lora_target_modules


ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
NO_TRANSFORM = {"logit_scale": 1.0, "softcap": None}
# family: (model_type, config beyond the shared tiny shape, default LoRA targets, head transform)
FAMILIES = {
    "llama": ("llama", {}, ATTENTION, NO_TRANSFORM),
    "llama-tied": ("llama", {"tie_word_embeddings": True}, ATTENTION, NO_TRANSFORM),
    "qwen2": ("qwen2", {}, ATTENTION, NO_TRANSFORM),
    "qwen3": ("qwen3", {"head_dim": 8}, ATTENTION, NO_TRANSFORM),
    "qwen3-moe": (
        "qwen3_moe",
        {"head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16},
        ATTENTION,
        NO_TRANSFORM,
    ),
    "mistral": ("mistral", {}, ATTENTION, NO_TRANSFORM),
    # a cap near the logits' size, so that the cap bends them (Gemma's own is 30 on logits of that order)
    "gemma2": (
        "gemma2",
        {"head_dim": 8, "final_logit_softcapping": 1.5},
        ATTENTION,
        {"logit_scale": 1.0, "softcap": 1.5},
    ),
    "gemma3": (
        "gemma3_text",
        {"head_dim": 8, "final_logit_softcapping": 1.5},
        ATTENTION,
        {"logit_scale": 1.0, "softcap": 1.5},
    ),
    "phi3": ("phi3", {}, ["o_proj", "qkv_proj"], NO_TRANSFORM),
    "olmo2": ("olmo2", {}, ATTENTION, NO_TRANSFORM),
    "granite": ("granite", {"logits_scaling": 4.0}, ATTENTION, {"logit_scale": 0.25, "softcap": None}),
    "cohere": ("cohere", {"logit_scale": 0.25}, ATTENTION, {"logit_scale": 0.25, "softcap": None}),
    "gpt-neox": ("gpt_neox", {}, ["query_key_value", "dense"], NO_TRANSFORM),
}
LAYERS = 2


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def problems():
    rows = [{"question": q, "answer": a, "index": i} for i, (q, a) in enumerate(PROBLEMS[:4])]
    return Dataset.from_list(rows)


@pytest.fixture(scope="module")
def prompts(problems, tokenizer):
    return build_prompts(problems, tokenizer, "Solve.", max_prompt_length=512)


def make_family_model(family: str, tokenizer, seed: int = 0):
    """A 2-layer model of the family, hidden size 16, over the test tokenizer; weights large enough for peaked
    logits, so that greedy decoding meets no near-ties."""
    model_type, extra, _, _ = FAMILIES[family]
    shape = {
        "vocab_size": len(tokenizer),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 2,
        "max_position_embeddings": 1024,  # the default 512-token prompt cut plus answers must fit
        "initializer_range": 0.5,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "tie_word_embeddings": False,
    }
    if model_type != "gpt_neox":  # GPT-NeoX has no grouped-query attention
        shape["num_key_value_heads"] = 1
    config = AutoConfig.for_model(model_type, **{**shape, **extra})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def make_config(tmp_path, **overrides) -> ZeroSiamConfig:
    settings = {
        "output_dir": str(tmp_path / "run"),
        "per_device_train_batch_size": 2,
        "max_new_tokens": 4,
        "learning_rate": 1e-2,
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "no",
        "seed": 0,
        "use_cpu": True,
    }
    return ZeroSiamConfig(**{**settings, **overrides})


def prompt_batch(prompts, tokenizer) -> dict:
    input_ids, attention_mask = pad([list(ids) for ids in prompts["prompt_ids"]], tokenizer.pad_token_id, side="left")
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_loss_reads_the_models_own_logits(family, tokenizer, prompts):
    model = make_family_model(family, tokenizer)
    transform = head_transform(model.config)
    assert transform == FAMILIES[family][3]
    assert model.config.tie_word_embeddings == (family == "llama-tied")
    batch = prompt_batch(prompts, tokenizer)
    with torch.no_grad():
        outputs = model(**batch, output_hidden_states=True)
    hidden, head = outputs.hidden_states[-1], model.get_output_embeddings()
    # every position, padding included: the head's input and the transform give the model's logits
    torch.testing.assert_close(
        head_logits(hidden, head.weight, head.bias, **transform), outputs.logits, rtol=0, atol=1e-6
    )
    if transform != NO_TRANSFORM:  # and the transform matters: the raw head is not the model's logits
        assert (head_logits(hidden, head.weight, head.bias) - outputs.logits).abs().max() > 0.05
    # the chunked head, which never holds these logits whole, finds the same argmax and norm at every real token
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        result = head_loss("tent", hidden, head.weight, mask, chunk_size=5, lm_head_bias=head.bias, **transform)
    assert torch.equal(result.clean_top1, outputs.logits[mask].argmax(-1))
    torch.testing.assert_close(result.clean_logit_norm, outputs.logits[mask].norm(dim=-1).mean(), rtol=1e-5, atol=0)
    check_head_input(model, transform)  # and the trainer's probe accepts it


@pytest.mark.parametrize("method", ["tent", "zerosiam"])
@pytest.mark.parametrize("family", FAMILIES)
def test_adapts_online_saves_reloads_and_merges(family, method, tmp_path, tokenizer, problems, prompts):
    trainer = ZeroSiamTrainer(
        make_family_model(family, tokenizer),
        make_config(tmp_path, method=method),
        prompts,
        tokenizer,
        gold=gold_answers(problems, NumericChecker()),
    )
    targets = FAMILIES[family][2]
    expected = [(str(layer), name) for layer in range(LAYERS) for name in targets]
    modules = lora_modules(trainer.model)  # e.g. model.layers.0.self_attn.q_proj: (layer, short name)
    assert [(name.split("layers.")[1].split(".")[0], name.rsplit(".", 1)[1]) for name in modules] == expected
    trainer.train()
    assert trainer.state.global_step == 2 and len(trainer.online_records) == len(prompts)
    lora_b = {name: p for name, p in trainer.model.named_parameters() if "lora_B" in name}
    assert len(lora_b) == len(expected) and all(p.abs().max() > 0 for p in lora_b.values())  # every LoRA moved

    model = trainer.model.eval()
    trainer.save_model(str(tmp_path / "adapter"))
    reloaded = PeftModel.from_pretrained(make_family_model(family, tokenizer), str(tmp_path / "adapter")).eval()
    batch = prompt_batch(prompts, tokenizer)
    with torch.no_grad():
        logits = model(**batch).logits
        torch.testing.assert_close(reloaded(**batch).logits, logits, rtol=0, atol=1e-6)
        with model.disable_adapter():
            assert (model(**batch).logits - logits).abs().max() > 1e-4  # the adapter does change the model

    ids = prompts["prompt_ids"]
    merged = generate_completions(model, tokenizer, ids, max_new_tokens=8, batch_size=2, merge_lora=True)
    unmerged = generate_completions(model, tokenizer, ids, max_new_tokens=8, batch_size=2, merge_lora=False)
    assert all(merged) and merged == unmerged


# ------------------------------------------------------------------------------------------------------- command line
@pytest.mark.parametrize("family", ["phi3", "gemma2", "granite"])
def test_adapt_runs_on_a_saved_folder_and_records_lora_and_head(family, tokenizer, tmp_path, problems_file):
    # what a user ran: a tiny model of the family in a folder, through adapt.py (Granite stopped at its first update)
    model_dir = tmp_path / family
    make_family_model(family, tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    adapt.main(adapt_argv(str(model_dir), problems_file, tmp_path / "run", "--max_steps", "1"))
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["model"]["head_transform"] == FAMILIES[family][3]
    assert {name.rsplit(".", 1)[1] for name in record["lora_modules"]} == set(FAMILIES[family][2])
    assert record["results"]["steps"] == 1 and record["log_history"][0]["loss"] > 0


def test_adapt_refuses_targets_a_family_lacks_in_one_line(capsys, tokenizer, tmp_path, problems_file):
    model_dir = tmp_path / "phi3"
    make_family_model("phi3", tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    argv = adapt_argv(str(model_dir), problems_file, tmp_path / "run", "--lora_target_modules", *ATTENTION)
    assert_usage_error(capsys, partial(adapt.main, argv), "q_proj k_proj v_proj match no linear layer of Phi3")


# ------------------------------------------------------------------------------------------------------- LoRA targets
def test_targets_that_an_architecture_lacks_are_one_line_naming_its_layers(tokenizer, tmp_path):
    model = make_family_model("phi3", tokenizer)
    with pytest.raises(ValueError) as error:
        build_adapted_model(model, make_config(tmp_path, lora_target_modules=ATTENTION))
    message = str(error.value)
    assert "\n" not in message
    assert "q_proj k_proj v_proj match no linear layer of Phi3ForCausalLM" in message  # o_proj exists, the rest not
    assert "whose linear layers are named o_proj qkv_proj gate_up_proj down_proj" in message


def test_requested_targets_override_the_default(tokenizer):
    model = make_family_model("phi3", tokenizer)
    assert lora_target_modules(model, ["qkv_proj", "gate_up_proj"]) == ["qkv_proj", "gate_up_proj"]
    # all-linear: every linear layer but the output head
    assert lora_target_modules(model, ["all-linear"]) == ["o_proj", "qkv_proj", "gate_up_proj", "down_proj"]


def test_a_model_without_attention_modules_falls_back_to_peft_then_refuses(tokenizer, monkeypatch):
    model = make_family_model("llama", tokenizer)
    for module in model.modules():  # what an architecture whose attention class is not named *Attention looks like
        if type(module).__name__ == "LlamaAttention":
            monkeypatch.setattr(module, "__class__", type("SelfMixer", (type(module),), {}))
    assert lora_target_modules(model, None) == ["q_proj", "v_proj"]  # peft's table for llama
    monkeypatch.setattr(model.config, "model_type", "unknown_lm")
    with pytest.raises(ValueError, match="no attention block to put LoRA on by default; name the layers with"):
        lora_target_modules(model, None)


# ---------------------------------------------------------------------------------------------------------- refusals
class DoubledLogits(LlamaForCausalLM):
    """An architecture that post-processes its logits in a way no config attribute tells."""

    def forward(self, *args, **kwargs):
        outputs = super().forward(*args, **kwargs)
        outputs.logits = outputs.logits * 2
        return outputs


def test_an_uncovered_head_is_refused_before_anything_is_generated(tmp_path, tokenizer, prompts, monkeypatch):
    config = LlamaConfig(**make_family_model("llama", tokenizer).config.to_dict())
    model = DoubledLogits(config)
    monkeypatch.setattr(ZeroSiamTrainer, "_generate", lambda *args: pytest.fail("generated before the refusal"))
    with pytest.raises(ValueError) as error:
        ZeroSiamTrainer(model, make_config(tmp_path, protocol="offline"), prompts, tokenizer)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("DoubledLogits: its logits are not its LM head applied to the last hidden state")


def test_the_probe_refuses_a_transform_that_is_not_the_models(tokenizer):
    model = make_family_model("granite", tokenizer)
    with pytest.raises(ValueError, match="GraniteForCausalLM: its logits are not its LM head applied"):
        check_head_input(model, NO_TRANSFORM)


def test_a_logits_scaling_of_unknown_meaning_is_refused_from_the_config():
    # HyperCLOVA X multiplies by its logits_scaling where Granite divides
    config = AutoConfig.for_model("llama", logits_scaling=2.0, architectures=["HyperCLOVAXForCausalLM"])
    with pytest.raises(ValueError, match="HyperCLOVAXForCausalLM: its logits_scaling=2.0 is applied in a way"):
        head_transform(config)
