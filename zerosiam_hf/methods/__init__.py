"""The test-time methods, one module each, and their registry: `--method` takes its choices from `METHODS`.

Adding a method: a `Method` subclass in its own module (what it trains, its signal, samples, resets, options and its
loss or decoding hook), one line below, and its test.
"""

import json
import os
from pathlib import Path

from .base import Method
from .em_inf import EMInf
from .head import EMFT, Come, Tent, ZeroSiam
from .intuitor import Intuitor
from .none import NoAdaptation
from .rent import Rent
from .slot import SLOT
from .tlm import TLM
from .ttrl import TTRL


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        NoAdaptation(),
        Tent(),
        Come(),
        ZeroSiam(),
        EMFT(),
        TLM(),
        SLOT(),
        EMInf(),
        TTRL(),
        Rent(),
        Intuitor(),
    )
}
# Every method-specific option of ZeroSiamConfig: a method given one that it does not take refuses it.
METHOD_OPTIONS = tuple(dict.fromkeys(name for method in METHODS.values() for name in method.options))

# Beside a run's outputs: the method and its options. A decoding-time method (slot, em_inf) changes no weight, so
# these settings are all there is to reload: `METHODS[name].decoding(model, SimpleNamespace(**options), ...)`.
METHOD_FILE = "method.json"


def write_method_settings(folder: str | os.PathLike, args) -> None:
    """Write `METHOD_FILE` in `folder`: the method's name, what it trains, its signal and its options."""
    method = METHODS[args.method]
    settings = {
        "method": method.name,
        "trains": method.trains,
        "signal": args.signal,
        "options": {name: getattr(args, name) for name in method.options},
    }
    (Path(folder) / METHOD_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def read_method_settings(folder: str | os.PathLike) -> tuple[Method, dict]:
    """The method saved in `folder` and its options, as `write_method_settings` wrote them."""
    file = Path(folder) / METHOD_FILE
    try:
        settings = json.loads(file.read_text())
        return METHODS[settings["method"]], settings["options"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{file}: not a method file written by zerosiam-hf ({type(error).__name__}).") from None
