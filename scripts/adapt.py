"""Adapt a causal LM at test time with ZeroSiam or another method of the zoo (--method) on unlabeled test prompts.

A thin wrapper over `zerosiam_hf.commands.adapt` (also installed as `zerosiam-adapt`);
see its docstring or `--help` for usage.
"""

from zerosiam_hf.commands.adapt import main


if __name__ == "__main__":
    main()
