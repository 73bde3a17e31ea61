"""Paired differences between two sets of runs (two conditions, the same methods, seeds and problems).

A thin wrapper over `zerosiam_hf.commands.paired` (also installed as `zerosiam-paired`);
see its docstring or `--help` for usage.
"""

from zerosiam_hf.commands.paired import main


if __name__ == "__main__":
    main()
