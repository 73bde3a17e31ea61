"""Measure a causal LM's zero-shot accuracy on synthetic word-problem presets, to calibrate their difficulty.

A thin wrapper over `zerosiam_hf.commands.calibrate_synthetic` (also installed as `zerosiam-calibrate-synthetic`);
see its docstring or `--help` for usage.
"""

from zerosiam_hf.commands.calibrate_synthetic import main


if __name__ == "__main__":
    main()
