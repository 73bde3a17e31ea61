"""The project's commands, one module each: `zerosiam-<name>` on the PATH, `python -m zerosiam_hf.commands.<name>`,
or `scripts/<name>.py` in a checkout (a thin wrapper, so `accelerate launch scripts/adapt.py` works). Each parses its
flags and calls the library."""

from zerosiam_hf.engines import hide_optional_engines


# Every command module is imported through this package, so this runs before any of them imports peft or accelerate:
# a plain run never imports bitsandbytes or DeepSpeed (zerosiam_hf.engines says why).
hide_optional_engines()
