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
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from zerosiam_hf.cli import console_entry, exits_cleanly, parse_args
from zerosiam_hf.modeling import local_model_folder, resolve_model
from zerosiam_hf.records import (
    check_output_dir,
    close_staging,
    config_dict,
    open_staging,
    publish,
    versions,
    write_json,
)


logger = logging.getLogger("zerosiam_hf")


@dataclass
class ExportArguments:
    """Which model to export and where."""

    output_dir: str = field(metadata={"help": "Folder to write the model into."})
    model: str = field(default="llama", metadata={"help": "A model alias whose weights are local, or a local folder."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an output_dir that holds something else."})

    def __post_init__(self):
        resolve_model(self.model)  # a misspelt model fails before anything is converted


@exits_cleanly
def main(argv: list[str] | None = None) -> str:
    """Copy the model's local transformers folder (converting the embedded GGUF first if needed) to output_dir."""
    # ------------------------------------------------------------------------------------------------ arguments
    (args,) = parse_args((ExportArguments,), argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    config = config_dict(args)
    check_output_dir(args.output_dir, config, args.overwrite, record_file="export.json")

    # ------------------------------------------------------------------------------------------------ model
    source = local_model_folder(args.model)

    # ------------------------------------------------------------------------------------------------ save
    staging = open_staging(args.output_dir, config, args.overwrite, record_file="export.json")
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        record = {"config": config, "command": sys.argv, "model": resolve_model(args.model), "source": source}
        write_json(staging / "export.json", {**record, "versions": versions()})
        publish(staging, args.output_dir)
    finally:
        close_staging(staging)
    print(f"model written to {args.output_dir}; any tool that takes a transformers folder can name it")
    return str(Path(args.output_dir).resolve())


console = console_entry(main)  # the `zerosiam-<name>` entry point


if __name__ == "__main__":
    main()
