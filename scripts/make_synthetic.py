"""Write synthetic GSM8K-format word problems to a jsonl file with ``question`` and ``answer`` columns.

A thin wrapper over `zerosiam_hf.commands.make_synthetic` (also installed as `zerosiam-make-synthetic`);
see its docstring or `--help` for usage.
"""

from zerosiam_hf.commands.make_synthetic import main


if __name__ == "__main__":
    main()
