"""The test-time methods, one module each, and their registry: `--method` takes its choices from `METHODS`.

Adding a method: a `Method` subclass in its own module (what it trains, its signal, samples, resets, its `Options`
and its loss or decoding hook), one line below, and its test. The command line, `--config`, `--help`, the refusal of
another method's option and the tables of docs/METHODS.md (`markdown_tables`) are made from these declarations.
"""

import json
import os
from dataclasses import Field, fields
from pathlib import Path

from .base import Method
from .co_reward import CoReward
from .em_inf import EMInf
from .empo import EMPO
from .gold_grpo import GoldGRPO
from .head import EMFT, Come, Tent, ZeroSiam
from .intuitor import Intuitor
from .none import NoAdaptation
from .rent import Rent
from .self_harmony import SelfHarmony
from .slot import SLOT
from .tlm import TLM
from .ttrl import TTRL
from .urlvr import URLVR


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
        EMPO(),
        URLVR(),
        SelfHarmony(),
        CoReward(),
        GoldGRPO(),
    )
}


def declared_options(methods) -> dict[str, list[tuple[str, Field]]]:
    """Each option of `methods`, by name, with the methods that declare it and their declarations, in registry order.

    Methods may share an option with their own defaults (the sampling temperature), never with another help or type.
    """
    declared: dict[str, list[tuple[str, Field]]] = {}
    order: list[str] = []
    for method in methods:
        own = [option.name for option in fields(method.options_class)]
        for i, option in enumerate(fields(method.options_class)):
            if option.name not in declared:  # before the first of its later options placed already, as it declares
                later = next((order.index(name) for name in own[i + 1 :] if name in declared), len(order))
                order.insert(later, option.name)
            declared.setdefault(option.name, []).append((method.name, option))
    declared = {name: declared[name] for name in order}
    for name, takers in declared.items():
        first = takers[0][1]
        clash = next(
            (m for m, o in takers if (o.type, o.metadata["help"]) != (first.type, first.metadata["help"])), None
        )
        if clash:
            raise TypeError(
                f"option {name}: {clash} declares it with another type or help than {takers[0][0]}; share the "
                f"declaration ({takers[0][0]}'s options_class.redefault)."
            )
    return declared


def option_defaults(takers: list[tuple[str, Field]]) -> str:
    """The defaults of one option as its help shows them: the most common first, then each other method's."""
    defaults = [option.default for _, option in takers]
    common = max(defaults, key=defaults.count)
    others = ", ".join(f"{method} {option.default}" for method, option in takers if option.default != common)
    return f"{common}; {others}" if others else str(common)


_TRAINS = {"lora": "LoRA", "lora+predictor": "LoRA + predictor", "delta": "a delta per prompt (never saved)"}


def markdown_tables() -> str:
    """docs/METHODS.md's tables of the methods and of their options, from the registry."""
    rows = [
        "| method | trains | signal | answers a prompt | resets | its options (default here) |",
        "|---|---|---|---|---|---|",
    ]
    for method in METHODS.values():
        options = method.options
        signal = " (or ".join(method.signals) + ")" * (len(method.signals) - 1) if method.updates_weights else "-"
        temperature = options.get("sampling_temperature")
        answers = "k = {}, ".format(options["num_generations"]) if method.samples else "1, "
        answers += f"sampled at {temperature}" if temperature is not None else "greedy"
        answers += f"; {method.more_answers}" if method.more_answers else ""
        resets = {"never": "never", "prompt": "every prompt"}[method.resets] if method.trains != "nothing" else "-"
        own = ", ".join(f"{name} {default}" for name, default in options.items()) or "-"
        trains = _TRAINS.get(method.trains, method.trains)
        name = f"{method.name} (oracle: reads the gold)" if method.reads_gold else method.name
        rows.append(f"| {name} | {trains} | {signal} | {answers} | {resets} | {own} |")
    rows += ["", "| option | methods | default | what it sets |", "|---|---|---|---|"]
    for name, takers in declared_options(METHODS.values()).items():
        methods = ", ".join(method for method, _ in takers)
        rows.append(f"| `--{name}` | {methods} | {option_defaults(takers)} | {takers[0][1].metadata['help']} |")
    return "\n".join(rows) + "\n"


# Beside a run's outputs: the method and its options. A decoding-time method (slot, em_inf) changes no weight, so
# these settings are all there is to reload: `METHODS[name].decoding(run, model, ...)` with `run.args` holding them.
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
