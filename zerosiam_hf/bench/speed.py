"""The loss-head stage of scripts/measure_speed.py and its helpers: the loss head's random inputs and one step, peak
memory (CUDA allocator, or resident set size in a fresh child process on CPU), variants timed taking turns, the
report's ratios and table, and the machine's description. The goals the figures are held against are in
docs/SPEED.md."""

import concurrent.futures
import gc
import logging
import multiprocessing
import os
import platform
import resource
import statistics
import time

import torch

from ..losses import head_loss


logger = logging.getLogger(__name__)

EMBEDDED_HEAD = {"hidden": 576, "vocab": 49152}  # SmolLM2-135M-Instruct, the project's embedded model
GPU_SHAPES = [(16384, 576, 49152), (8192, 4096, 128256)]  # (tokens, hidden, vocab); the second is Llama-3.1-8B's
CPU_TOKENS, CPU_CHUNK, GPU_CHUNK = 512, 128, 1024
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


def measure_loss_head(
    device: str,
    dtype: str,
    *,
    methods: list[str],
    tokens: int | None = None,
    hidden: int | None = None,
    vocab: int | None = None,
    chunk_size: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    warmup: int = 1,
    repeats: int = 5,
) -> list[dict]:
    """Time and measure every (method, naive | chunked) variant at each shape: the one given (unset sizes default to
    the embedded model's head), or with none given on a GPU, the two of GPU_SHAPES."""
    cuda = device.startswith("cuda")
    if tokens is None and hidden is None and vocab is None and cuda:
        shapes = GPU_SHAPES
    else:
        shapes = [
            (
                tokens or (GPU_SHAPES[0][0] if cuda else CPU_TOKENS),
                hidden or EMBEDDED_HEAD["hidden"],
                vocab or EMBEDDED_HEAD["vocab"],
            )
        ]
    chunk_size = chunk_size or (GPU_CHUNK if cuda else CPU_CHUNK)
    variants = [(method, size) for method in methods for size in (0, chunk_size)]
    report = []
    for tokens, hidden, vocab in shapes:
        shape = {"tokens": tokens, "hidden": hidden, "vocab": vocab, "dtype": dtype}
        setting = {**shape, "device": device, "seed": seed, "threads": threads}
        results = []
        for method, size in variants:
            measure = measure_peak if cuda else measure_peak_in_child
            result = {"method": method, "implementation": "chunked" if size else "naive", "chunk_size": size}
            result.update(measure(setting, method, size))
            if cuda:
                torch.cuda.empty_cache()
            logger.info("memory: %s", result)
            results.append(result)
        for result, timing in zip(results, time_round_robin(setting, variants, warmup, repeats)):
            result.update(timing)
        shape.update(results=results, ratios=ratios(results))
        print(format_table(shape) + "\n", flush=True)
        report.append(shape)
    return report


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
