"""Accuracy of a base model on a benchmark (GSM8K, Math-500, ...) and, given an adapter, of the adapted model.

Usage:

    # base and adapted model on the same 64 problems, greedy, strict and flexible scoring
    python scripts/evaluate.py --model llama --adapter outputs/offline --max_samples 64

    # Math-500, answers checked by math-verify (also aime24, college_math, minerva_math)
    python scripts/evaluate.py --model llama --adapter outputs/offline --dataset math500 --max_samples 64

    # the base model alone on the full test split (GPU)
    python scripts/evaluate.py --model llama --batch_size 512 --output_dir outputs/eval-base

    # beside the greedy answer, 16 sampled ones per problem: mean@16 (what TTRL, RENT and one-shot EM report as
    # pass@1), pass@16 and maj@16, at their temperature and top-p, reproducible from --seed
    python scripts/evaluate.py --model llama --adapter outputs/offline --max_samples 64 \\
        --num_samples 16 --temperature 0.6 --top_p 0.95 --seed 0

The output folder holds `eval.json` (the decoding protocol, accuracies, n, timings, config, data identity, versions)
and one `predictions-<variant>.jsonl` per evaluated variant.
"""

import logging

from zerosiam_hf.cli import console_entry, exits_cleanly, parse_args
from zerosiam_hf.data import DataArguments
from zerosiam_hf.generation import GenerationArguments
from zerosiam_hf.modeling import ModelArguments
from zerosiam_hf.pipeline import EvalArguments, evaluate, evaluation_dir, protocol_summary
from zerosiam_hf.staging import OutputArguments


@exits_cleanly
def main(argv: list[str] | None = None) -> dict:
    """Evaluate the base and/or adapted model and return the evaluation record."""
    # ------------------------------------------------------------------------------------------------ arguments
    model_args, data_args, generation, output_args, args = parse_args(
        (ModelArguments, DataArguments, GenerationArguments, OutputArguments, EvalArguments), argv
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    record = evaluate(model_args, data_args, generation, output_args, args)
    protocol = protocol_summary(record["protocol"])
    for variant, summary in record["results"].items():
        line = (
            f"{variant}: greedy strict {summary['accuracy_strict']:.2f}%, flexible {summary['accuracy_flexible']:.2f}%"
        )
        sampled, seconds = summary.get("sampled"), summary["generate_seconds"]
        if sampled:
            k = sampled["k"]
            line += (
                f"; sampled (flexible) mean@{k} {sampled['mean_at_k']:.2f}%, pass@{k} {sampled['pass_at_k']:.2f}%, "
                f"maj@{k} {sampled['maj_at_k']:.2f}%"
            )
            seconds += sampled["generate_seconds"]
        print(f"{line} over {summary['n']} problems ({protocol}, {seconds:.0f} s)")
    print(f"results in {evaluation_dir(model_args, args)}/eval.json")
    return record


console = console_entry(main)  # the `zerosiam-<name>` entry point


if __name__ == "__main__":
    main()
