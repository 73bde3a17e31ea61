"""Write a model (the embedded default above all) as a plain transformers folder that any Hugging Face tool can name.

The embedded SmolLM2-135M-Instruct ships as a GGUF file inside a Python package; this command writes the float32
checkpoint converted from it (config, safetensors weights, tokenizer with its chat template, generation config) to
a folder of your choice, with `export.json` recording where it came from.

Usage:

    python scripts/export_model.py --model llama --output_dir models/smollm2-135m-instruct

    # then, e.g., lm-evaluation-harness on the base model and on an adapter saved by adapt.py
    lm_eval --model hf --model_args pretrained=models/smollm2-135m-instruct,peft=outputs/zerosiam ...
"""

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from zerosiam_hf.cli import console_entry, exits_cleanly, parse_args
from zerosiam_hf.invocation import redacted
from zerosiam_hf.modeling import local_model_folder, resolve_model
from zerosiam_hf.records import config_dict, versions, write_json
from zerosiam_hf.staging import OutputArguments, copy_folder, staged_output


logger = logging.getLogger("zerosiam_hf")


@dataclass
class ExportArguments:
    """Which model to export and where."""

    output_dir: str = field(metadata={"help": "Folder to write the model into."})
    model: str = field(default="llama", metadata={"help": "A model alias whose weights are local, or a local folder."})

    def __post_init__(self):
        resolve_model(self.model)  # a misspelt model fails before anything is converted


@exits_cleanly
def main(argv: list[str] | None = None) -> str:
    """Copy the model's local transformers folder (converting the embedded GGUF first if needed) to output_dir."""
    # ------------------------------------------------------------------------------------------------ arguments
    args, output_args = parse_args((ExportArguments, OutputArguments), argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    config = config_dict(args, output_args)

    # ------------------------------------------------------------------------------------------------ model, save
    inputs = {"--model": args.model}  # a copy into the model's folder would copy itself, or replace its source
    with staged_output(
        args.output_dir, config, output_args.overwrite, record_file="export.json", inputs=inputs
    ) as staging:
        source = local_model_folder(args.model)  # converts the embedded GGUF on first use
        copy_folder(Path(source), staging)
        record = {
            "config": config,
            "command": redacted(sys.argv),
            "model": resolve_model(args.model),
            "source": source,
        }
        write_json(staging / "export.json", {**record, "versions": versions()})
    print(f"model written to {args.output_dir}; any tool that takes a transformers folder can name it")
    return str(Path(args.output_dir).resolve())


console = console_entry(main)  # the `zerosiam-<name>` entry point


if __name__ == "__main__":
    main()
