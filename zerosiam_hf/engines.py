"""Optional engines (bitsandbytes, DeepSpeed): a command imports one only when its run asks for it.

Two libraries import them whenever they are installed: peft imports bitsandbytes with itself (peft/helpers.py), and
accelerate imports DeepSpeed on every `unwrap_model`. Importing bitsandbytes on an AVX512-BF16 CPU asks the hub for a
kernel (kernels-community/quantization-bitsandbytes, through the `kernels` package) and prints a line whatever the
answer; importing DeepSpeed on a machine without a GPU prints a warning about its accelerator. So a command hides both
before anything imports peft or accelerate (`hide_optional_engines`), those libraries then see them as not installed,
and the 4-bit path brings bitsandbytes back (`import_bitsandbytes`). A DeepSpeed launch (accelerate's DeepSpeed
config, or `--deepspeed` on the command line) never hides DeepSpeed.
"""

import importlib
import importlib.metadata
import logging
import os
import sys
from types import ModuleType


# bitsandbytes logs this when it cannot load the hub kernel, which `import_bitsandbytes` keeps it from looking for.
_KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"
_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward"


def installed(distribution: str) -> bool:
    """Whether a distribution is installed, hidden or not (its metadata, not its import)."""
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def deepspeed_launch() -> bool:
    """Whether this process runs under DeepSpeed: an accelerate config that says so, or the `--deepspeed` flag."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return True
    return any(arg == "--deepspeed" or arg.startswith("--deepspeed=") for arg in sys.argv[1:])


def hidden(name: str) -> bool:
    """Whether `hide_optional_engines` hid the engine `name` from this process."""
    return name in sys.modules and sys.modules[name] is None


def hide_optional_engines() -> None:
    """Make bitsandbytes (and DeepSpeed, outside a DeepSpeed launch) look absent to every later import.

    A None entry in `sys.modules` is Python's own "not importable": `import` raises ImportError and
    `importlib.util.find_spec` answers None, which is how peft and accelerate ask. An engine already imported stays.
    """
    names = ["bitsandbytes"] + ([] if deepspeed_launch() else ["deepspeed"])
    for name in names:
        sys.modules.setdefault(name, None)


def _drop_kernel_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_KERNEL_NOTICE)


def import_bitsandbytes() -> ModuleType:
    """bitsandbytes, brought back if a command hid it, imported without its CPU backend asking the hub for a kernel.

    That kernel serves only bitsandbytes' packed CPU inference format, which this project switches off
    (`quantization.keep_4bit_layers_unpacked`): with `kernels` out of reach for the import, the backend falls back to
    its own code at once, offline or not, and the line it logs about that is dropped.
    """
    if hidden("bitsandbytes"):
        del sys.modules["bitsandbytes"]
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"]
    kernel_logger = logging.getLogger(_KERNEL_LOGGER)
    if _drop_kernel_notice not in kernel_logger.filters:
        kernel_logger.addFilter(_drop_kernel_notice)
    kernels = sys.modules.get("kernels")
    sys.modules["kernels"] = None
    try:
        return importlib.import_module("bitsandbytes")
    finally:
        if kernels is None:
            del sys.modules["kernels"]
        else:
            sys.modules["kernels"] = kernels
