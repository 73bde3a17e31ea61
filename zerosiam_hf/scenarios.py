"""Scenarios of `compare.py --scenario NAME`: a named grid over one test-time condition, each cell one column of the
comparison (as `--datasets` makes one column per benchmark), and the plot of accuracy against that condition.

- `batch_size`: 1, 2, 4 and 16 prompts per update (`--per_device_train_batch_size`);
- `learning_rate`: 1e-4, 5e-4, 2e-3 and 5e-3, the robustness curve (log axis);
- `noise_<kind>`, one per kind of `--noise` (`noise_typos`, `noise_distractors`, ...): severities 1 to 5 of that kind;
- `stream_order`: iid, blocked, interleaved and by_answer (`--stream_order`).

A cell changes a data setting (`DataArguments`) or a run setting (`ZeroSiamConfig`), and nothing else: every run of a
cell is seeded as any run of a comparison is, and its run.json holds the cell's setting among its own.
"""

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .cli import read_yaml
from .data import DataArguments
from .noise import NOISE_KINDS, SEVERITIES


@dataclass(frozen=True)
class Cell:
    """One cell of a scenario: its column key (and runs folder), its place and label on the plot's axis, and the
    data and run settings it sets."""

    key: str
    x: float
    label: str
    data: dict
    run: dict

    @property
    def flags(self) -> str:
        """The cell's settings as the command line would give them."""
        return " ".join(f"--{name} {value}" for name, value in {**self.data, **self.run}.items())


@dataclass(frozen=True)
class Scenario:
    """A grid over one axis; `scale` is how the plot lays the cells out: log, log2, linear or category."""

    name: str
    axis: str
    scale: str
    cells: tuple[Cell, ...]

    @property
    def options(self) -> list[str]:
        """The options the cells set, which the user may not give beside the scenario."""
        return list(dict.fromkeys(name for cell in self.cells for name in (*cell.data, *cell.run)))

    def columns(self, data_args: DataArguments, seeds: list[int]) -> dict[str, dict[int, DataArguments]]:
        """One column per cell, as compare lays out the benchmarks of a suite: key -> seed -> the cell's data."""
        return {cell.key: {seed: dataclasses.replace(data_args, **cell.data) for seed in seeds} for cell in self.cells}

    def run_settings(self) -> dict[str, dict]:
        """What each cell (by key) changes in its runs' settings."""
        return {cell.key: cell.run for cell in self.cells}

    def only(self, keys: list[str]) -> "Scenario":
        """The scenario with only the cells named in `keys` (column keys), in its own order."""
        known = [cell.key for cell in self.cells]
        unknown = [key for key in keys if key not in known]
        if unknown:
            raise ValueError(
                f"--scenario_cells {' '.join(unknown)}: not a cell of --scenario {self.name}, whose cells are "
                f"{', '.join(known)}."
            )
        return dataclasses.replace(self, cells=tuple(cell for cell in self.cells if cell.key in keys))

    def describe(self) -> dict:
        """The scenario as comparison.json records it."""
        cells = {cell.key: {"label": cell.label, **cell.data, **cell.run} for cell in self.cells}
        return {"name": self.name, "axis": self.axis, "cells": cells}


def _exponent(value: float) -> str:
    return f"{value:.0e}".replace("e-0", "e-")  # 5e-4, as one writes a learning rate


SCENARIOS: dict[str, Scenario] = {
    "batch_size": Scenario(
        "batch_size",
        "prompts per update (per_device_train_batch_size)",
        "log2",
        tuple(Cell(f"batch{n}", n, str(n), {}, {"per_device_train_batch_size": n}) for n in (1, 2, 4, 16)),
    ),
    "learning_rate": Scenario(
        "learning_rate",
        "learning rate",
        "log",
        tuple(
            Cell(f"lr{_exponent(lr)}", lr, _exponent(lr), {}, {"learning_rate": lr}) for lr in (1e-4, 5e-4, 2e-3, 5e-3)
        ),
    ),
    **{
        f"noise_{kind}": Scenario(
            f"noise_{kind}",
            f"{kind} severity",
            "linear",
            tuple(Cell(f"severity{s}", s, str(s), {"noise": kind, "noise_severity": s}, {}) for s in SEVERITIES),
        )
        for kind in NOISE_KINDS
    },
    "stream_order": Scenario(
        "stream_order",
        "stream order",
        "category",
        tuple(
            Cell(order, x, order, {"stream_order": order}, {})
            for x, order in enumerate(("iid", "blocked", "interleaved", "by_answer"))
        ),
    ),
}


# How far apart the methods' lines are drawn on each scale: a factor on a log axis, a distance on the others.
SPREAD = {"log": 10**0.015, "log2": 2**0.04, "linear": 0.04, "category": 0.04}


def given_options(argv: list[str], names: list[str]) -> list[str]:
    """Which of the options `names` the command line gives, itself or in the `--config` file it names (`argv` was
    parsed already: the file is valid)."""
    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("--config", default=None)
    for name in names:
        finder.add_argument(f"--{name}", nargs="*", default=argparse.SUPPRESS)
    found = vars(finder.parse_known_args(argv)[0])
    in_file = read_yaml(Path(found["config"]), f"--config {found['config']}") if found["config"] else {}
    return [name for name in names if name in found or name in in_file]


def check_options(scenario: Scenario, argv: list[str]) -> None:
    """Refuse an option the scenario sets in its cells that the user gave too: the cells would override it."""
    given = given_options(argv, scenario.options)
    if given:
        values = ", ".join(cell.label for cell in scenario.cells)
        raise ValueError(
            f"--scenario {scenario.name} sets --{given[0]} in its cells ({values}); drop --{given[0]}, or drop "
            "--scenario."
        )


def plot_scenario(scenario: Scenario, result: dict, output_dir: Path) -> str:
    """Flexible accuracy against the scenario's axis, a line per method with its 95% interval (from the comparison's
    suite rows and paired rows), into scenario_<name>.png; returns the file's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    intervals = {(row["dataset"], row["method"]): row["flexible_ci"] for row in result["paired"]}
    keys = [cell.key for cell in scenario.cells]
    labels = [cell.label for cell in scenario.cells]
    xs = [cell.x for cell in scenario.cells]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    rows = result["accuracy_flexible"]
    for position, row in enumerate(rows):
        means = [row[key][0] for key in keys]
        lows = [mean - intervals[(key, row["method"])][0] for key, mean in zip(keys, means)]
        highs = [intervals[(key, row["method"])][1] - mean for key, mean in zip(keys, means)]
        # each method drawn a little to the side, so that equal intervals stay apart
        side, spread = position - (len(rows) - 1) / 2, SPREAD[scenario.scale]
        shifted = [x * spread**side if scenario.scale.startswith("log") else x + spread * side for x in xs]
        ax.errorbar(shifted, means, yerr=[lows, highs], marker="o", ms=4, capsize=3, label=row["method"])
    if scenario.scale == "log":
        ax.set_xscale("log")
    elif scenario.scale == "log2":
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs, labels)
    ax.minorticks_off()
    ax.set_xlabel(scenario.axis)
    ax.set_ylabel("online accuracy, flexible (%)")
    ax.set_title(f"{scenario.name}: mean over seeds, 95% interval")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    name = f"scenario_{scenario.name}.png"
    fig.savefig(output_dir / name, dpi=120)
    plt.close(fig)
    return name
