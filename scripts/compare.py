"""Compare adaptation methods over seeds (and benchmarks) under the online protocol: markdown tables and PNG plots.

A thin wrapper over `zerosiam_hf.commands.compare` (also installed as `zerosiam-compare`);
see its docstring or `--help` for usage.
"""

from zerosiam_hf.commands.compare import main


if __name__ == "__main__":
    main()
