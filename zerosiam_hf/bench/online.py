"""The online-loop and generation stages of scripts/measure_speed.py, on a real model and real prompts: the online
protocol's wall time against plain evaluation, and the two generation backends against each other."""

import logging
import statistics
import tempfile
import time


logger = logging.getLogger(__name__)


def measure_online(
    device: str,
    *,
    model: str,
    dataset: str,
    prompts: int,
    batch_size: int,
    max_new_tokens: int,
    rounds: int = 1,
    seed: int = 0,
) -> dict:
    """Wall time of the online protocol (none, tent, zerosiam) against plain evaluation on the same prompts.

    Every variant loads the model afresh and answers the same prompts at the same batch size; `evaluate` is
    `generate_completions` on the base model, the others are `ZeroSiamTrainer.train()` with one update per batch
    (none: no update). Generated lengths differ once a model adapts, so they are reported beside the times.
    """
    # imported here, after the script has hidden the optional engines from peft and accelerate
    from ..config import ZeroSiamConfig
    from ..data import DataArguments, build_prompts, gold_answers, load_problems
    from ..generation import generate_completions
    from ..modeling import ModelArguments, load_model_and_tokenizer
    from ..trainer import ZeroSiamTrainer

    data_args = DataArguments(dataset=dataset, max_samples=prompts)
    problems, identity = load_problems(data_args)
    gold = gold_answers(problems, data_args.make_checker())
    times: dict[str, list[float]] = {}
    tokens: dict[str, list[float]] = {}
    for _ in range(rounds):
        for variant in ("evaluate", "none", "tent", "zerosiam"):
            loaded, tokenizer, _ = load_model_and_tokenizer(ModelArguments(model=model))
            loaded.to(device)
            prompt_rows = build_prompts(problems, tokenizer, data_args.instruction, max_prompt_length=512)
            with tempfile.TemporaryDirectory() as tmp:
                if variant == "evaluate":
                    start = time.perf_counter()
                    completions = generate_completions(
                        loaded,
                        tokenizer,
                        prompt_rows["prompt_ids"],
                        max_new_tokens=max_new_tokens,
                        batch_size=batch_size,
                    )
                    seconds = time.perf_counter() - start
                    lengths = [len(c) for c in completions]
                else:
                    config = ZeroSiamConfig(
                        output_dir=tmp,
                        method=variant,
                        per_device_train_batch_size=batch_size,
                        max_new_tokens=max_new_tokens,
                        report_to="none",
                        disable_tqdm=True,
                        seed=seed,
                        use_cpu=device == "cpu",
                    )
                    trainer = ZeroSiamTrainer(loaded, config, prompt_rows, tokenizer, gold=gold)
                    start = time.perf_counter()
                    trainer.train()
                    seconds = time.perf_counter() - start
                    lengths = [r["tokens"] for r in trainer.online_records.values()]
            times.setdefault(variant, []).append(seconds)
            tokens.setdefault(variant, []).append(statistics.fmean(lengths))
            logger.info("online %s: %.1f s, %.1f tokens per answer", variant, seconds, tokens[variant][-1])
    rows = [
        {"variant": v, "seconds": statistics.median(times[v]), "answer_tokens": statistics.fmean(tokens[v])}
        for v in times
    ]
    base = times["evaluate"]
    for row in rows:
        row["ratio_to_evaluate"] = row["seconds"] / statistics.median(base)
    lines = ["| variant | wall s | tokens per answer | / evaluate |", "|---|---|---|---|"]
    lines += [
        f"| {r['variant']} | {r['seconds']:.1f} | {r['answer_tokens']:.1f} | {r['ratio_to_evaluate']:.2f} |"
        for r in rows
    ]
    print("\n".join(lines) + "\n", flush=True)
    settings = {
        "online_model": model,
        "online_prompts": prompts,
        "online_batch_size": batch_size,
        "online_max_new_tokens": max_new_tokens,
    }
    return {"settings": settings, "data": identity, "rows": rows}


def measure_generation(
    device: str,
    *,
    model: str,
    dataset: str,
    prompts: int,
    batch_sizes: list[int],
    max_new_tokens: int,
    rounds: int = 1,
) -> dict:
    """Tokens per second of the continuous backend against the static one: the model answers the same prompts
    greedily with each backend at each batch size, the backends taking turns in every round so that a shared CPU's
    load hits both alike; the ratio is of wall times, with the process's CPU time (all its threads: continuous
    batching decodes in a thread of its own) beside it. Greedy answers must be equal; the report says whether they
    were."""
    # imported here, after the script has hidden the optional engines from peft and accelerate
    from ..data import DataArguments, build_prompts, load_problems
    from ..generation import generate_completions
    from ..modeling import ModelArguments, load_model_and_tokenizer

    data_args = DataArguments(dataset=dataset, max_samples=prompts)
    problems, identity = load_problems(data_args)
    loaded, tokenizer, _ = load_model_and_tokenizer(ModelArguments(model=model))
    loaded.to(device)
    prompt_ids = build_prompts(problems, tokenizer, data_args.instruction, max_prompt_length=512)["prompt_ids"]
    rows = []
    for batch_size in batch_sizes:
        seconds, cpu_seconds, answers = {"static": [], "continuous": []}, {"static": [], "continuous": []}, {}
        for round_ in range(rounds):
            # alternate which backend goes first, so that neither always follows the other's cache state
            order = ("static", "continuous") if round_ % 2 == 0 else ("continuous", "static")
            for backend in order:
                start, start_cpu = time.perf_counter(), time.process_time()
                answers[backend] = generate_completions(
                    loaded,
                    tokenizer,
                    prompt_ids,
                    max_new_tokens=max_new_tokens,
                    batch_size=batch_size,
                    backend=backend,
                )
                seconds[backend].append(time.perf_counter() - start)
                cpu_seconds[backend].append(time.process_time() - start_cpu)  # every thread of the process
                logger.info(
                    "generation batch %d %s: %.1f s (CPU %.1f s)",
                    batch_size,
                    backend,
                    seconds[backend][-1],
                    cpu_seconds[backend][-1],
                )
        tokens = sum(len(answer) for answer in answers["static"])
        ratios = [s / c for s, c in zip(seconds["static"], seconds["continuous"])]
        rows.append(
            {
                "batch_size": batch_size,
                "tokens": tokens,
                "answer_lengths": [len(answer) for answer in answers["static"]],
                "same_answers": answers["static"] == answers["continuous"],
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "static_tokens_per_s": tokens / statistics.median(seconds["static"]),
                "continuous_tokens_per_s": tokens / statistics.median(seconds["continuous"]),
                "ratio_per_round": ratios,
                "ratio": statistics.median(ratios),
                "cpu_ratio": statistics.median(
                    s / c for s, c in zip(cpu_seconds["static"], cpu_seconds["continuous"])
                ),
            }
        )
    lines = [
        "| batch | prompts | tokens | cut at cap | static tok/s | continuous tok/s | continuous / static | CPU time "
        "static / continuous | same |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cut = sum(n >= max_new_tokens for n in r["answer_lengths"])
        lines.append(
            f"| {r['batch_size']} | {len(prompt_ids)} | {r['tokens']} | {cut} | {r['static_tokens_per_s']:.1f} | "
            f"{r['continuous_tokens_per_s']:.1f} | {r['ratio']:.2f} | {r['cpu_ratio']:.2f} | {r['same_answers']} |"
        )
    print("\n".join(lines) + "\n", flush=True)
    settings = {"model": model, "prompts": len(prompt_ids), "max_new_tokens": max_new_tokens}
    return {"settings": settings, "data": identity, "rows": rows}
