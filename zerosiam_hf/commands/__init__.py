"""The project's commands, one module each: `zerosiam-<name>` on the PATH, `python -m zerosiam_hf.commands.<name>`,
or `scripts/<name>.py` in a checkout (a thin wrapper, so `accelerate launch scripts/adapt.py` works)."""
