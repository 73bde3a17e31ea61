"""Optional engines (bitsandbytes, DeepSpeed): a command imports one only when its run asks for it.

Two libraries import them whenever they are installed: peft imports bitsandbytes with itself (peft/helpers.py), and
accelerate imports DeepSpeed on every `unwrap_model`. Importing bitsandbytes on an AVX512-BF16 CPU asks the hub for a
kernel (kernels-community/quantization-bitsandbytes, through the `kernels` package) and prints a line whatever the
answer; importing DeepSpeed on a machine without a GPU prints a warning about its accelerator. So a command hides both
before anything imports peft or accelerate (`hide_optional_engines`), those libraries then see them as not installed,
and the 4-bit path brings bitsandbytes back (`import_bitsandbytes`). A DeepSpeed launch (accelerate's DeepSpeed
config, or `--deepspeed` on the command line) never hides DeepSpeed. Code that imports the package's modules itself
(a user's script around `ZeroSiamTrainer`) hides nothing: there the package makes the first import of bitsandbytes,
whoever asks for it, the quiet one of `import_bitsandbytes` (`quiet_bitsandbytes_import`).
"""

import contextlib
import importlib
import importlib.abc
import importlib.machinery
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


_ABSENT = object()  # no entry in sys.modules, which None (not importable) is not


@contextlib.contextmanager
def _without_kernels():
    """While bitsandbytes imports: its CPU backend finds `kernels` absent, so it asks the hub for nothing and falls
    back to its own code at once, offline or not; the line it logs about that is dropped. Nests."""
    kernel_logger = logging.getLogger(_KERNEL_LOGGER)
    if _drop_kernel_notice not in kernel_logger.filters:
        kernel_logger.addFilter(_drop_kernel_notice)
    kernels = sys.modules.get("kernels", _ABSENT)
    sys.modules["kernels"] = None
    try:
        yield
    finally:
        if kernels is _ABSENT:
            sys.modules.pop("kernels", None)
        else:
            sys.modules["kernels"] = kernels


def import_bitsandbytes() -> ModuleType:
    """bitsandbytes, brought back if a command hid it, imported without its CPU backend asking the hub for a kernel.

    That kernel serves only bitsandbytes' packed CPU inference format, which this project switches off
    (`quantization.keep_4bit_layers_unpacked`), so the import goes without it (`_without_kernels`).
    """
    if hidden("bitsandbytes"):
        del sys.modules["bitsandbytes"]
    if "bitsandbytes" in sys.modules:
        return sys.modules["bitsandbytes"]
    with _without_kernels():
        return importlib.import_module("bitsandbytes")


class _QuietBitsandbytes(importlib.abc.MetaPathFinder):
    """Finds bitsandbytes (where the path finder does) and runs its import without `kernels`; it leaves the import
    system once that import has run. A mere lookup (`importlib.util.find_spec`, how libraries ask whether it is
    installed) imports nothing and keeps it in place."""

    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader

        def exec_module(module):
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            del loader.exec_module  # the loader's own method again (a zip archive's loader serves other modules too)
            with _without_kernels():
                loader.exec_module(module)

        loader.exec_module = exec_module
        return spec


def quiet_bitsandbytes_import() -> None:
    """Make the first import of bitsandbytes in this process, by anyone (peft imports it with itself), the quiet one
    of `import_bitsandbytes`. Nothing changes once it is imported, or hidden by a command (`sys.modules` answers
    before any finder is asked)."""
    if "bitsandbytes" not in sys.modules and not any(isinstance(f, _QuietBitsandbytes) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietBitsandbytes())
