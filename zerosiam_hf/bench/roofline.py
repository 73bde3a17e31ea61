"""A roofline of one online step: the machine's own ceilings, then each phase of the step timed against the floor
those ceilings set for it.

Ceilings: the matrix-product rate of each dtype (square products, best of several) and the memory bandwidth (one
read of a buffer larger than any cache). Phases, on the model the runs use, with LoRA (and the predictor) attached:
the prompts' prefill, one decoding step (the model's forward alone, and generate()'s whole step), the update's forward
with the loss head, its backward, the loss head alone and the optimizer step. A phase's floor is the larger of its
FLOPs over the peak of its dtype and its bytes over the bandwidth; the fraction reached is the floor over the
measured time, 1 at the floor.
"""

import math
import tempfile
import time
from collections.abc import Callable

import torch
from datasets import Dataset

from ..config import ZeroSiamConfig
from ..generation import cache_argument, generate_batches, greedy_config, merged_lora
from ..losses import head_loss
from ..trainer import ZeroSiamTrainer


def best_seconds(run: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """The fastest of `repeats` timed calls of `run` after one untimed call: the ceiling a phase reaches when
    nothing else competes for the machine."""
    run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def synchronizer(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def matmul_peak(dtype: torch.dtype, device: str, size: int, repeats: int = 5) -> float:
    """FLOP/s of one `size` x `size` x `size` product in `dtype`."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    return 2 * size**3 / best_seconds(lambda: a @ b, repeats, synchronizer(device))


def memory_bandwidth(device: str, nbytes: int, repeats: int = 5) -> float:
    """Bytes/s of reading `nbytes` once (a sum, whose arithmetic is negligible beside the read)."""
    buffer = torch.ones(nbytes // 4, device=device)
    return nbytes / best_seconds(buffer.sum, repeats, synchronizer(device))


def ceilings(device: str, dtypes: list[torch.dtype], size: int, nbytes: int) -> dict:
    """The machine's peaks: FLOP/s per dtype name and bytes/s."""
    return {
        "flops": {str(dtype).removeprefix("torch."): matmul_peak(dtype, device, size) for dtype in dtypes},
        "bandwidth": memory_bandwidth(device, nbytes),
    }


def linear_weights(model) -> tuple[int, int]:
    """(parameters, bytes) of the weights a token's forward multiplies by: every linear layer's, the LM head's
    included, embeddings (a lookup) excluded. LoRA counts at its own size, folded in or not."""
    count, nbytes = 0, 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            count += module.weight.numel()
            nbytes += module.weight.numel() * module.weight.element_size()
    return count, nbytes


def attention_flops(config, rows: int, queries: int, keys: int) -> int:
    """FLOPs of the attention products (scores and weighted values) for `queries` new positions per row reading
    `keys` positions each, over every layer."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 4 * rows * queries * keys * config.num_attention_heads * head_dim * config.num_hidden_layers


def kv_bytes(config, rows: int, positions: int, element_size: int) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * positions * rows * element_size


def phase_row(name: str, seconds: float, flops: float, nbytes: float, peak: float, bandwidth: float) -> dict:
    floors = {"compute": flops / peak, "memory": nbytes / bandwidth}
    bound = max(floors, key=floors.get)
    return {
        "phase": name,
        "ms": seconds * 1e3,
        "gflop": flops / 1e9,
        "mb": nbytes / 2**20,
        "floor_ms": floors[bound] * 1e3,
        "bound": bound,
        "fraction": floors[bound] / seconds,
    }


def measure_phases(model, tokenizer, *, method: str, batch: int, prompt: int, answer: int, peaks: dict, repeats: int):
    """Time each phase of one online step of `method` on `batch` prompts of `prompt` random tokens with answers of
    `answer` tokens. Returns the rows of the table (see `phase_row`)."""
    device = next(model.parameters()).device
    sync = synchronizer(device.type)
    dtype = model.dtype
    peak, bandwidth = peaks["flops"][str(dtype).removeprefix("torch.")], peaks["bandwidth"]
    config = model.config
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config.vocab_size, (batch, prompt), generator=generator).to(device)
    prompts = Dataset.from_dict({"index": list(range(batch)), "prompt_ids": ids.tolist()})
    with tempfile.TemporaryDirectory() as tmp:
        args = ZeroSiamConfig(
            output_dir=tmp,
            method=method,
            per_device_train_batch_size=batch,
            max_new_tokens=answer,
            report_to="none",
            disable_tqdm=True,
            use_cpu=device.type == "cpu",
        )
        trainer = ZeroSiamTrainer(model, args, prompts, tokenizer, gold={i: 0.0 for i in range(batch)})
    model = trainer.model
    weights, weight_bytes = linear_weights(model.get_base_model())
    rows = []

    # generation: LoRA folded in, eval mode, no gradients, as generate_batches runs it
    model.eval()
    with torch.no_grad(), merged_lora(model):
        # generate()'s prefill: the head on the last position only
        prefill = best_seconds(lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1), repeats, sync)
        head_weights = model.get_output_embeddings().weight.numel()
        flops = 2 * (weights - head_weights) * batch * prompt + 2 * head_weights * batch
        flops += attention_flops(config, batch, prompt, prompt) // 2
        rows.append(phase_row("prefill", prefill, flops, weight_bytes, peak, bandwidth))
        name = cache_argument(model)
        cache = model(input_ids=ids, use_cache=True, logits_to_keep=1)[name]
        last = ids[:, -1:]

        def decode():
            model(input_ids=last, use_cache=True, **{name: cache})
            cache.crop(-1)  # the next step reads the same cache length

        step = best_seconds(decode, repeats, sync)
        nbytes = weight_bytes + kv_bytes(config, batch, prompt, dtype.itemsize)
        flops = 2 * weights * batch + attention_flops(config, batch, 1, prompt)
        rows.append(phase_row("decoding step (forward)", step, flops, nbytes, peak, bandwidth))
    generation = greedy_config(model, tokenizer, answer)
    generation.min_new_tokens = answer  # every answer runs to `answer` tokens
    whole = best_seconds(lambda: generate_batches(model, [(ids, torch.ones_like(ids))], generation), 1, sync)
    nbytes = weight_bytes + kv_bytes(config, batch, prompt + answer // 2, dtype.itemsize)
    flops = 2 * weights * batch + attention_flops(config, batch, 1, prompt + answer // 2)
    # the prefill gives the first token, the other answer - 1 are decoding steps
    step = (whole - prefill) / max(answer - 1, 1)
    rows.append(phase_row("decoding step (generate)", step, flops, nbytes, peak, bandwidth))

    # the update, on prompt + answer, as the trainer builds it
    model.train()
    full = torch.cat([ids, torch.randint(3, config.vocab_size, (batch, answer), generator=generator).to(device)], 1)
    loss_mask = torch.zeros_like(full, dtype=torch.bool)
    loss_mask[:, prompt - 1 : -1] = True
    inputs = {"input_ids": full, "attention_mask": torch.ones_like(full), "loss_mask": loss_mask}
    tokens, selected = full.numel(), int(loss_mask.sum())
    vocab, hidden = trainer.lm_head.weight.shape
    branches = 2 if trainer.predictor is not None else 1
    head_flops = 2 * vocab * hidden * selected * (branches + 1)  # each branch's logits, then one gradient product
    trainable = [p for p in model.parameters() if p.requires_grad]
    forward_seconds, backward_seconds = [], []
    for _ in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = trainer.compute_loss(model, inputs)
        sync()
        middle = time.perf_counter()
        loss.backward()
        sync()
        forward_seconds.append(middle - start)
        backward_seconds.append(time.perf_counter() - middle)
    backbone = 2 * weights * tokens + attention_flops(config, batch, full.shape[1], full.shape[1]) // 2
    head_weights = vocab * hidden
    # a lower bound of the head's traffic: its weight read by each chunk's logits and gradient products, and its
    # float32 [rows, V] logits, probabilities and gradient each written and read once
    chunks = math.ceil(selected / args.loss_chunk_size)
    head_bytes = 2 * chunks * head_weights * dtype.itemsize + 3 * 2 * branches * selected * vocab * 4
    rows.append(
        phase_row(
            "update forward + loss head",
            min(forward_seconds[1:]),
            backbone - 2 * head_weights * tokens + head_flops,
            weight_bytes + head_bytes,
            peak,
            bandwidth,
        )
    )
    # backward: the input gradient of every frozen product (LoRA's weight gradients are small beside it)
    rows.append(
        phase_row(
            "update backward",
            min(backward_seconds[1:]),
            backbone - 2 * head_weights * tokens,
            weight_bytes,
            peak,
            bandwidth,
        )
    )

    rows_hidden = torch.randn(1, selected, hidden, device=device, dtype=dtype, requires_grad=True)
    mask = torch.ones(1, selected, dtype=torch.bool, device=device)
    predictor = None if trainer.predictor is None else trainer.predictor.weight

    def head():  # the method's own call (HeadMethod.loss) on hidden states of the answer positions' count
        result = head_loss(
            trainer.method.head,
            rows_hidden,
            trainer.lm_head.weight,
            mask,
            predictor_weight=predictor,
            chunk_size=args.loss_chunk_size,
            lm_head_bias=trainer.lm_head.bias,
            **trainer.method.head_kwargs(args, trainer.head_transform),
        )
        result.loss.backward()

    seconds = best_seconds(head, repeats, sync)
    rows.append(phase_row("loss head (forward + backward)", seconds, head_flops, head_bytes, peak, bandwidth))

    optimizer = trainer.create_optimizer()
    for param in trainable:
        param.grad = torch.zeros_like(param)
    seconds = best_seconds(optimizer.step, repeats, sync)
    # AdamW reads and writes each parameter and both moments, and reads the gradient: 7 float32 passes
    nbytes = 7 * sum(p.numel() * p.element_size() for p in trainable)
    rows.append(phase_row("optimizer step", seconds, 0, nbytes, peak, bandwidth))
    optimizer.zero_grad(set_to_none=True)
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [
        "| phase | measured ms | GFLOP | MiB read | floor ms | bound by | fraction of floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['phase']} | {r['ms']:.1f} | {r['gflop']:.1f} | {r['mb']:.0f} | {r['floor_ms']:.1f} | "
            f"{r['bound']} | {r['fraction']:.2f} |"
        )
    return "\n".join(lines) + "\n"
