"""Accuracy of a base model on a benchmark (GSM8K, Math-500, ...) and, given an adapter, of the adapted model.

A thin wrapper over `zerosiam_hf.commands.evaluate` (also installed as `zerosiam-evaluate`);
see its docstring or `--help` for usage.
"""

from zerosiam_hf.commands.evaluate import main


if __name__ == "__main__":
    main()
