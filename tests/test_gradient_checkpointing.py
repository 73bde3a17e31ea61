"""`--gradient_checkpointing` with LoRA, the ZeroSiam predictor and the chunked loss head: the same gradients as
without it, the decoder layers really recomputed in the backward, and no KV cache while training."""

import pytest
import torch
from helpers import make_config, make_model
from transformers import TrainerCallback

from zerosiam_hf.modeling import build_adapted_model
from zerosiam_hf.trainer import ZeroSiamTrainer


class GradientsBeforeTheStep(TrainerCallback):
    """The trainable parameters' gradients of each step, as the optimizer is about to take them."""

    def __init__(self, model):
        self.model, self.steps = model, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.steps.append(
            {name: p.grad.detach().clone() for name, p in self.model.named_parameters() if p.requires_grad}
        )


def one_step(tmp_path, tokenizer, prompts, gold, checkpointing: bool, **overrides):
    """One update of a tiny adapted model whose LoRA B and predictor start away from zero and the identity (at
    their initial values LoRA A gets no gradient), with or without gradient checkpointing: its gradients, and
    what each forward of the first layer's attention and of the backbone saw."""
    args = make_config(tmp_path / str(checkpointing), max_steps=1, gradient_checkpointing=checkpointing, **overrides)
    model = build_adapted_model(make_model(tokenizer), args)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and "lora_A" not in name:
                param.add_(torch.randn(param.shape, generator=generator), alpha=0.1)
    layer_calls, backbone_calls = [], []
    # transformers checkpoints the layer's forward, not its call: the hook goes on a module inside it
    attention = model.get_base_model().model.layers[0].self_attn
    attention.register_forward_pre_hook(lambda module, inputs: layer_calls.append(module.training))

    def backbone_hook(module, args, kwargs, output):
        if module.training:
            backbone_calls.append((kwargs.get("use_cache"), output.past_key_values))

    model.get_base_model().model.register_forward_hook(backbone_hook, with_kwargs=True)
    recorder = GradientsBeforeTheStep(model)
    trainer = ZeroSiamTrainer(model, args, prompts, tokenizer, gold=gold, callbacks=[recorder])
    layer_calls.clear()  # from here on, the step: generation (no grad), the loss forward and the backward
    trainer.train()
    (gradients,) = recorder.steps
    return gradients, layer_calls, backbone_calls


@pytest.mark.parametrize(
    "method, loss_chunk_size, checkpoint_kwargs",
    [("zerosiam", 3, None), ("zerosiam", 0, None), ("tent", 3, None), ("zerosiam", 3, {"use_reentrant": True})],
    ids=["zerosiam-chunked", "zerosiam-naive", "tent-chunked", "zerosiam-reentrant"],
)
def test_gradients_are_the_same_with_and_without_checkpointing(
    tmp_path, tokenizer, prompts, gold, method, loss_chunk_size, checkpoint_kwargs
):
    """transformers' default (use_reentrant False) and the reentrant checkpoint, which needs the embeddings' output
    to require grad under LoRA (transformers sets it), give the gradients of the plain backward."""
    options = {"method": method, "loss_chunk_size": loss_chunk_size}
    plain, plain_layer, plain_backbone = one_step(tmp_path, tokenizer, prompts, gold, False, **options)
    options["gradient_checkpointing_kwargs"] = checkpoint_kwargs
    checkpointed, checkpointed_layer, backbone = one_step(tmp_path, tokenizer, prompts, gold, True, **options)
    assert plain.keys() == checkpointed.keys()
    names = list(plain)
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    assert any("zerosiam_predictor" in n for n in names) == (method == "zerosiam")
    for name in names:
        assert plain[name].abs().sum() > 0, f"{name} got no gradient"
        # the recompute repeats the same float32 operations: equal up to rounding
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-8, msg=name)
    # the loss forward entered the first layer's attention once in training mode (generation runs in eval mode);
    # checkpointed, the backward's recompute entered it a second time
    assert plain_layer.count(True) == 1 and checkpointed_layer.count(True) == 2
    # the training forward asks for no KV cache and gets none
    assert backbone and all(use_cache is False and cache is None for use_cache, cache in backbone + plain_backbone)
