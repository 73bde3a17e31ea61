"""Measure a causal LM's zero-shot accuracy on synthetic word-problem presets, to calibrate their difficulty.

The model is resolved by `zerosiam_hf.modeling` (a model alias, a hub id or a local folder), the
prompt is the project's GSM8K prompt (chat template, question, blank line, `#### <number>` instruction), decoding is
greedy, and answers are scored by `zerosiam_hf.scoring` (strict `#### N` and flexible last-number match). On a
shared CPU, `OMP_NUM_THREADS=1` is several times faster than oversubscribed threads.

Usage:

    # every preset of zerosiam_hf.synthetic.SHIFTS on the embedded SmolLM2-135M-Instruct (alias `llama`),
    # 128 problems each: about 6 min per preset on one shared CPU core
    OMP_NUM_THREADS=1 python scripts/calibrate_synthetic.py --model llama --dtype float32 --n 128 \\
        --max_new_tokens 160 --output runs/calibrate_synthetic/smollm2-135m.json

    # two presets, with a knob overridden in both
    python scripts/calibrate_synthetic.py --model llama --presets base verbose --num_steps 2 --n 64 \\
        --output runs/calibrate_synthetic/two_steps.json
"""

import dataclasses
import logging
import os
from dataclasses import dataclass, field

import torch
from datasets import Dataset

from zerosiam_hf.checkers import NumericChecker
from zerosiam_hf.cli import console_entry, exits_cleanly, parse_args
from zerosiam_hf.data import build_prompts, gold_answers
from zerosiam_hf.generation import GenerationArguments, answer_and_score
from zerosiam_hf.modeling import ModelArguments, load_model_and_tokenizer, resolve_model
from zerosiam_hf.records import versions, write_json, write_jsonl
from zerosiam_hf.synthetic import SHIFTS, SyntheticConfig, generate_problems
from zerosiam_hf.tasks import NUMERIC_INSTRUCTION


logger = logging.getLogger(__name__)


@dataclass
class CalibrateArguments:
    """Which presets to measure, and how many problems."""

    output: str = field(metadata={"help": "JSON file for the results; generations go beside it as .jsonl."})
    presets: list[str] = field(
        default_factory=lambda: list(SHIFTS), metadata={"help": f"Presets to measure, among {list(SHIFTS)}."}
    )
    n: int = field(default=128, metadata={"help": "Problems per preset."})
    num_steps: int | None = field(default=None, metadata={"help": "Override num_steps in every preset."})
    max_value: int | None = field(default=None, metadata={"help": "Override max_value in every preset."})
    num_distractors: int | None = field(default=None, metadata={"help": "Override num_distractors in every preset."})
    phrasing: str | None = field(default=None, metadata={"help": "Override phrasing in every preset."})
    operations: str | None = field(default=None, metadata={"help": "Override operations in every preset."})
    seed: int | None = field(default=None, metadata={"help": "Override seed in every preset."})

    def __post_init__(self):
        unknown = [p for p in self.presets if p not in SHIFTS]
        if unknown:
            raise ValueError(f"presets must be among {list(SHIFTS)}, got {unknown}.")
        if self.n < 1:
            raise ValueError(f"--n must be a positive number of problems, got {self.n}.")

    def configs(self) -> dict[str, SyntheticConfig]:
        """Return each requested preset with the command-line knob overrides applied."""
        knobs = {f.name for f in dataclasses.fields(SyntheticConfig)}
        overrides = {k: v for k, v in dataclasses.asdict(self).items() if k in knobs and v is not None}
        return {p: dataclasses.replace(SHIFTS[p], **overrides) for p in self.presets}


@exits_cleanly
def main(argv: list[str] | None = None):
    """Measure strict and flexible accuracy per preset and write them, with the run's identity, as JSON."""
    # ---- logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args, model_args, generation = parse_args((CalibrateArguments, ModelArguments, GenerationArguments), argv)
    configs = args.configs()
    resolve_model(model_args.model)  # an unknown model fails here, before any loading

    # ---- model
    device_map = 0 if torch.cuda.is_available() else None
    model, tokenizer, model_spec = load_model_and_tokenizer(model_args, device_map=device_map)
    model.eval()

    # ---- evaluate and save (the JSON is rewritten after each preset, so an interrupted run keeps what it measured)
    record = {
        "args": {**dataclasses.asdict(args), **dataclasses.asdict(generation)},
        "model": {**dataclasses.asdict(model_args), **model_spec},
        "prompt": f"{{question}}\n\n{NUMERIC_INSTRUCTION}",
        "versions": {**versions(), "torch_threads": torch.get_num_threads()},
        "results": {},
    }
    stem = os.path.splitext(args.output)[0]
    for preset, config in configs.items():
        rows = generate_problems(args.n, config)
        problems = Dataset.from_list(rows).add_column("index", list(range(len(rows))))
        prompts = build_prompts(problems, tokenizer, NUMERIC_INSTRUCTION, generation.max_prompt_length)
        gold = gold_answers(problems, NumericChecker())
        summary, scored = answer_and_score(
            model,
            tokenizer,
            prompts,
            gold,
            NumericChecker(),
            max_new_tokens=generation.max_new_tokens,
            batch_size=generation.batch_size,
            backend=generation.generation_backend,
        )
        records = [{**row, **record} for row, record in zip(rows, scored)]
        seconds = round(summary.pop("generate_seconds"), 1)
        result = {"config": dataclasses.asdict(config), **summary, "seconds": seconds}
        record["results"][preset] = result
        logger.info("%s: %s", preset, result)
        write_jsonl(f"{stem}.{preset}.jsonl", records)
        write_json(args.output, record)
    logger.info("Wrote %s", args.output)


console = console_entry(main)  # the `zerosiam-<name>` entry point


if __name__ == "__main__":
    main()
