"""The project's commands, one module each: `zerosiam-<name>` on the PATH, `python -m zerosiam_hf.commands.<name>`,
or `scripts/<name>.py` in a checkout (a thin wrapper, so `accelerate launch scripts/adapt.py` works). Each parses its
flags and calls the library."""

from zerosiam_hf.quantization import drop_kernel_notice


# Every command module is imported through this package, so the filter is in place before any of them imports peft.
drop_kernel_notice()
