"""Accuracy of a base model on a benchmark (GSM8K, Math-500, ...) and, given an adapter, of the adapted model.

Usage:

    # base and adapted model on the same 64 problems, greedy, strict and flexible scoring
    python scripts/evaluate.py --model llama --adapter outputs/offline --max_samples 64

    # Math-500, answers checked by math-verify (also aime24, college_math, minerva_math)
    python scripts/evaluate.py --model llama --adapter outputs/offline --dataset math500 --max_samples 64

    # the base model alone on the full test split (GPU)
    python scripts/evaluate.py --model llama --batch_size 512 --output_dir outputs/eval-base

The output folder holds `eval.json` (accuracies, n, timings, config, data identity, versions) and one
`predictions-<variant>.jsonl` per evaluated variant.
"""

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zerosiam_hf.cli import console_entry, exits_cleanly, parse_args
from zerosiam_hf.data import DataArguments, build_prompts, gold_answers, load_problems, prompts_cut
from zerosiam_hf.generation import GenerationArguments, answer_and_score
from zerosiam_hf.modeling import ModelArguments, check_adapter, load_adapted_model, load_model_and_tokenizer
from zerosiam_hf.records import config_dict, versions, write_json, write_jsonl
from zerosiam_hf.staging import OutputArguments, staged_output


logger = logging.getLogger("zerosiam_hf")


@dataclass
class EvalArguments:
    """What to evaluate and where the results go."""

    adapter: str | None = field(default=None, metadata={"help": "Output folder of adapt.py to evaluate."})
    skip_base: bool = field(default=False, metadata={"help": "With --adapter, do not evaluate the base model too."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where eval.json goes; default <adapter>-eval, or outputs/eval-<model>."}
    )

    def __post_init__(self):
        if self.adapter is None and self.skip_base:
            raise ValueError("--skip_base needs --adapter: without one there is nothing else to evaluate.")


@exits_cleanly
def main(argv: list[str] | None = None) -> dict:
    """Evaluate the base and/or adapted model and return the evaluation record."""
    # ------------------------------------------------------------------------------------------------ arguments
    model_args, data_args, generation, output_args, args = parse_args(
        (ModelArguments, DataArguments, GenerationArguments, OutputArguments, EvalArguments), argv
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.adapter is not None:
        check_adapter(args.adapter)
    output_dir = args.output_dir or (
        f"{args.adapter.rstrip('/')}-eval" if args.adapter else f"outputs/eval-{Path(model_args.model).name}"
    )
    config = config_dict(model_args, data_args, generation, output_args, args)
    with staged_output(output_dir, config, output_args.overwrite, record_file="eval.json") as staging:
        record = _evaluate_into(staging, model_args, data_args, generation, args, config)
    for variant, summary in record["results"].items():
        print(
            f"{variant}: strict {summary['accuracy_strict']:.2f}%, flexible {summary['accuracy_flexible']:.2f}% "
            f"over {summary['n']} problems ({summary['generate_seconds']:.0f} s)"
        )
    print(f"results in {output_dir}/eval.json")
    return record


def _evaluate_into(staging, model_args, data_args, generation, args, config) -> dict:
    # ------------------------------------------------------------------------------------------------ data
    problems, data_identity = load_problems(data_args)

    # ------------------------------------------------------------------------------------------------ model
    model, tokenizer, model_spec = load_model_and_tokenizer(model_args)
    if torch.cuda.is_available() and not model_args.load_in_4bit:
        model.to("cuda")
    if args.adapter is not None:  # an adapter that does not fit the model is reported now, not after the base pass
        load_adapted_model(model, args.adapter).unload()
    prompts = build_prompts(problems, tokenizer, data_args.instruction, generation.max_prompt_length)
    data_identity["prompts_cut"] = prompts_cut(prompts)
    checker = data_args.make_checker()
    gold = gold_answers(problems, checker)
    answering = {
        "max_new_tokens": generation.max_new_tokens,
        "batch_size": generation.batch_size,
        "show_progress": True,
    }

    # ------------------------------------------------------------------------------------------------ evaluate
    results = {}
    try:
        if args.adapter is None or not args.skip_base:
            results["base"], records = answer_and_score(model, tokenizer, prompts, gold, checker, **answering)
            write_jsonl(staging / "predictions-base.jsonl", records)
        if args.adapter is not None:
            # The base pass is done: wrapping the same weights with the adapter costs no second load.
            model = load_adapted_model(model, args.adapter)
            results["adapted"], records = answer_and_score(model, tokenizer, prompts, gold, checker, **answering)
            write_jsonl(staging / "predictions-adapted.jsonl", records)
    finally:
        checker.close()

    # ------------------------------------------------------------------------------------------------ save
    record = {
        "config": config,
        "command": sys.argv,
        "model": model_spec,
        "adapter": str(Path(args.adapter).resolve()) if args.adapter else None,
        "data": data_identity,
        "versions": versions(),
        "results": results,
    }
    write_json(staging / "eval.json", record)
    return record


console = console_entry(main)  # the `zerosiam-<name>` entry point


if __name__ == "__main__":
    main()
