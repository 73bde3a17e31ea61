"""Measuring helpers of scripts/measure_speed.py: the loss head's random inputs and one step, peak memory (CUDA
allocator, or resident set size in a fresh child process on CPU), variants timed taking turns, the report's ratios
and table, and the machine's description; the time and peak memory of one adaptation update over an answer of a
given length. The goals the figures are held against are in docs/SPEED.md."""

import concurrent.futures
import gc
import multiprocessing
import os
import platform
import resource
import statistics
import threading
import time
from collections.abc import Callable

import torch

from .losses import head_loss


# The ratios the report gives (name, numerator, denominator), each a (method, implementation, measure); cpu_ms, the
# process's CPU time, is measured on CPU only, where other processes sharing the cores inflate the wall time. The
# goals they are held against are in docs/SPEED.md.
RATIOS = [
    ("wall time zerosiam chunked / tent chunked", ("zerosiam", "chunked", "time_ms"), ("tent", "chunked", "time_ms")),
    ("CPU time zerosiam chunked / tent chunked", ("zerosiam", "chunked", "cpu_ms"), ("tent", "chunked", "cpu_ms")),
    ("peak zerosiam chunked / tent naive", ("zerosiam", "chunked", "peak_mib"), ("tent", "naive", "peak_mib")),
    ("wall time zerosiam naive / tent naive", ("zerosiam", "naive", "time_ms"), ("tent", "naive", "time_ms")),
    ("peak zerosiam naive / tent naive", ("zerosiam", "naive", "peak_mib"), ("tent", "naive", "peak_mib")),
    ("wall time tent chunked / tent naive", ("tent", "chunked", "time_ms"), ("tent", "naive", "time_ms")),
]


def resident_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_inputs(setting: dict) -> dict:
    """Random hidden states [1, N, d], head [V, d], all-true mask and a near-identity predictor [d, d]."""
    device, tokens, hidden = setting["device"], setting["tokens"], setting["hidden"]
    kwargs = {"device": device, "dtype": getattr(torch, setting["dtype"])}
    torch.manual_seed(setting["seed"])
    # logits of standard deviation ~2, in the range of a trained LM's
    weight = torch.randn(setting["vocab"], hidden, **kwargs).mul_(2 / hidden**0.5)
    predictor = torch.eye(hidden, **kwargs).add_(torch.randn(hidden, hidden, **kwargs), alpha=0.01)
    return {
        "hidden": torch.randn(1, tokens, hidden, **kwargs).requires_grad_(),
        "lm_head_weight": weight,
        "mask": torch.ones(1, tokens, dtype=torch.bool, device=device),
        "predictor_weight": predictor.requires_grad_(),
    }


def loss_head_step(inputs: dict, method: str, chunk_size: int) -> None:
    """One forward and backward of the loss head, synchronized on a GPU."""
    inputs["hidden"].grad = inputs["predictor_weight"].grad = None
    predictor = inputs["predictor_weight"] if method == "zerosiam" else None
    loss = head_loss(
        method,
        inputs["hidden"],
        inputs["lm_head_weight"],
        inputs["mask"],
        predictor_weight=predictor,
        chunk_size=chunk_size,
    ).loss
    loss.backward()
    if inputs["hidden"].is_cuda:
        torch.cuda.synchronize()


def measure_peak(setting: dict, method: str, chunk_size: int) -> dict:
    """Peak extra memory (MiB) of one call above the memory held once the inputs exist."""
    if setting["threads"]:
        torch.set_num_threads(setting["threads"])
    # a tiny call first, so that one-time library set-up (thread pools, BLAS buffers) is not counted as the head's
    tiny = {**setting, "tokens": 2, "hidden": 8, "vocab": 16}
    loss_head_step(make_inputs(tiny), method, chunk_size)
    inputs = make_inputs(setting)
    if setting["device"].startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss_head_step(inputs, method, chunk_size)
        return {"peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}
    gc.collect()
    base = resident_bytes()
    # ru_maxrss is a high-water mark: a mark already above `base` would hide a smaller peak of the call
    slack = max(peak_resident_bytes() - base, 0)
    loss_head_step(inputs, method, chunk_size)
    return {"peak_mib": (peak_resident_bytes() - base) / 2**20, "rss_high_water_above_base_mib": slack / 2**20}


def measure_peak_in_child(setting: dict, method: str, chunk_size: int) -> dict:
    """measure_peak in a fresh spawned process, so that the peak RSS is this variant's alone."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure_peak, setting, method, chunk_size).result()


def time_round_robin(setting: dict, variants: list[tuple[str, int]], warmup: int, repeats: int) -> list[dict]:
    """Median wall (and on CPU, process CPU) time in ms of each variant's `repeats` calls, the variants taking turns.

    Taking turns, rather than timing one variant after another, lets a shared CPU's changing load slow every variant
    alike, so that their ratios hold even when the absolute times drift.
    """
    inputs = make_inputs(setting)
    for method, chunk_size in variants:
        for _ in range(warmup):
            loss_head_step(inputs, method, chunk_size)
    wall, cpu = [[] for _ in variants], [[] for _ in variants]
    for _ in range(repeats):
        for i, (method, chunk_size) in enumerate(variants):
            start, start_cpu = time.perf_counter(), time.process_time()
            loss_head_step(inputs, method, chunk_size)
            wall[i].append(1e3 * (time.perf_counter() - start))
            cpu[i].append(1e3 * (time.process_time() - start_cpu))
    timings = [{"time_ms": statistics.median(w), "times_ms": w} for w in wall]
    if not inputs["hidden"].is_cuda:
        for timing, c in zip(timings, cpu):
            timing.update(cpu_ms=statistics.median(c), cpu_times_ms=c)
    return timings


def ratios(results: list[dict]) -> list[dict]:
    """The RATIOS that the measured variants allow (the goals they are held against are in docs/SPEED.md)."""
    table = {(r["method"], r["implementation"]): r for r in results}
    rows = []
    for name, (method_a, impl_a, key_a), (method_b, impl_b, key_b) in RATIOS:
        if key_a in table.get((method_a, impl_a), {}) and key_b in table.get((method_b, impl_b), {}):
            rows.append({"ratio": name, "value": table[method_a, impl_a][key_a] / table[method_b, impl_b][key_b]})
    return rows


def format_table(shape: dict) -> str:
    """Markdown table of one shape's variants and ratios."""
    lines = [
        f"tokens {shape['tokens']}, hidden {shape['hidden']}, vocab {shape['vocab']}, {shape['dtype']}",
        "",
        "| method | implementation | chunk | median wall ms | median CPU ms | peak extra MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in shape["results"]:
        chunk, cpu = r["chunk_size"] or "-", f"{r['cpu_ms']:.0f}" if "cpu_ms" in r else "-"
        lines.append(
            f"| {r['method']} | {r['implementation']} | {chunk} | {r['time_ms']:.0f} | {cpu} | {r['peak_mib']:.0f} |"
        )
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {r['ratio']} | {r['value']:.2f} |" for r in shape["ratios"]]
    if any("cpu_ms" in r for r in shape["results"]):
        lines += ["", "On a CPU shared with other processes the wall time includes waiting for a core: read CPU time."]
    return "\n".join(lines)


def machine_info(device: str) -> dict:
    """Versions and hardware, with the CPU load at the start (the CPU may be shared)."""
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info = {
        "torch": torch.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0],
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def timed_peak(step: Callable[[], object], device: str, interval: float = 1e-3) -> dict:
    """Seconds and peak memory (MiB) of one call of `step`: `peak_mib` in all, and `start_mib` held before it.

    On a GPU, the CUDA allocator's own figures (`torch.cuda.max_memory_allocated`). On a CPU, a best effort: the
    process's resident set size, read every `interval` seconds by a thread while `step` runs, so a spike shorter than
    that can be missed, and memory the allocator keeps after freeing it still counts.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return {
            "seconds": seconds,
            "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
            "start_mib": start_bytes / 2**20,
        }
    gc.collect()
    start_bytes = resident_bytes()
    samples, done = [start_bytes], threading.Event()

    def sample():
        while not done.wait(interval):
            samples.append(resident_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        step()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    samples.append(resident_bytes())
    return {"seconds": seconds, "peak_mib": max(samples) / 2**20, "start_mib": start_bytes / 2**20}


def update_cost(trainer, batch_size: int, prompt_tokens: int, answer_tokens: int, repeats: int = 2) -> list[dict]:
    """Time and peak memory (`timed_peak`) of `repeats` updates of `trainer`'s method: the loss forward, backward and
    optimizer step over `batch_size` rows of random tokens, `prompt_tokens` of prompt then `answer_tokens` of answer
    that carry the loss, as the online loop trains on an answered batch. Generation is not included.

    The first update also creates the optimizer's state; `--gradient_checkpointing` is switched on as
    `Trainer.train()` would. `trainer` is a `ZeroSiamTrainer` of a method that trains weights.
    """
    model, args = trainer.model, trainer.args
    if args.gradient_checkpointing and not any(getattr(m, "gradient_checkpointing", False) for m in model.modules()):
        kwargs = dict(args.gradient_checkpointing_kwargs or {})
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.18; 5.17 has the older name only
            layers = {"every_n_layers": kwargs.pop("every_n_layers", 1), "offload": kwargs.pop("offload", False)}
            model.activation_checkpointing_enable(kwargs or None, **layers)
        else:
            model.gradient_checkpointing_enable(kwargs or None)
    model.train()
    optimizer = trainer.create_optimizer()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(args.seed)
    vocab = model.get_output_embeddings().weight.shape[0]
    length = prompt_tokens + answer_tokens
    input_ids = torch.randint(0, vocab, (batch_size, length), generator=generator).to(device)
    # the logits at position t predict token t + 1: the loss covers the positions that predict answer tokens
    loss_mask = torch.zeros(batch_size, length, dtype=torch.bool, device=device)
    loss_mask[:, prompt_tokens - 1 : length - 1] = True
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "loss_mask": loss_mask}

    def update():
        trainer.compute_loss(model, inputs).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return [timed_peak(update, device.type) for _ in range(repeats)]
