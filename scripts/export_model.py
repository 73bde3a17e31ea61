"""Write a model (the embedded default above all) as a plain transformers folder that any Hugging Face tool can name.

A thin wrapper over `zerosiam_hf.commands.export_model` (also installed as `zerosiam-export-model`);
see its docstring or `--help` for usage.
"""

from zerosiam_hf.commands.export_model import main


if __name__ == "__main__":
    main()
