"""The test-time methods, one module each, and their registry: `--method` takes its choices from `METHODS`.

Adding a method: a `Method` subclass in its own module (what it trains, its signal, samples, resets, options and its
loss or decoding hook), one line below, and its test.
"""

from .base import Method
from .head import EMFT, Come, Tent, ZeroSiam
from .intuitor import Intuitor
from .none import NoAdaptation
from .rent import Rent
from .ttrl import TTRL


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        NoAdaptation(),
        Tent(),
        Come(),
        ZeroSiam(),
        EMFT(),
        TTRL(),
        Rent(),
        Intuitor(),
    )
}
# Every method-specific option of ZeroSiamConfig: a method given one that it does not take refuses it.
METHOD_OPTIONS = tuple(dict.fromkeys(name for method in METHODS.values() for name in method.options))
