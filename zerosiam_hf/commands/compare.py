"""Compare adaptation methods over seeds (and benchmarks) under the online protocol: markdown tables and PNG plots.

Usage:

    # none / tent / come / zerosiam x 3 seeds on 64 synthetic problems (the `base` preset), embedded model, CPU
    python scripts/compare.py --model llama --synthetic_preset base --max_samples 64 --max_new_tokens 96 \\
        --per_device_train_batch_size 8 --output_dir outputs/compare

    # the same on GSM8K test (first 200 problems)
    python scripts/compare.py --model llama --dataset gsm8k --max_samples 200 --output_dir outputs/compare-gsm8k

    # the paper's table: four benchmarks, one column each plus their average (configs/paper_suite_llama3.1_8b.yaml
    # holds the paper's model and settings for a GPU; --dry_run true resolves everything and runs nothing)
    python scripts/compare.py --model llama --datasets math500 college_math aime24 minerva_math --max_samples 64 \\
        --max_new_tokens 128 --per_device_train_batch_size 8 --seeds 0 --output_dir outputs/paper-suite

    # a scenario: one column per learning rate (1e-4, 5e-4, 2e-3, 5e-3) and a plot of accuracy against it; the
    # others are batch_size, noise_<kind> (severities 1 to 5) and stream_order (docs/CONDITIONS.md)
    python scripts/compare.py --model llama --synthetic_preset base --scenario learning_rate \\
        --per_device_train_batch_size 1 --output_dir outputs/scenario-lr

    # a collapse stress test: a learning rate where Tent collapses
    python scripts/compare.py --model llama --synthetic_preset base --methods tent zerosiam --learning_rate 5e-3 \\
        --output_dir outputs/stress

Each run is a full adapt.py run in <output_dir>/runs/<method>-seed<k>/ (with --datasets, in
<output_dir>/runs/<dataset>/<method>-seed<k>/, with --scenario in <output_dir>/runs/<cell>/<method>-seed<k>/):
adapter, run.json, predictions.jsonl. The comparison is written to <output_dir>/comparison.md, comparison.json and one
PNG per diagnostic (one panel per benchmark or cell), and for a scenario scenario_<name>.png.

The whole folder is made in <output_dir>.partial and moved into place when it is done: a comparison that stops leaves
<output_dir> as it was, and the same command then goes on from the runs it finished (a run stopped after a checkpoint
resumes from it). A rerun reuses the finished runs of the comparison it replaces; a folder holding another comparison
is replaced only with --overwrite true (which redoes every run), and one holding files no zerosiam-hf run wrote never.
"""

import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from zerosiam_hf.cli import console_entry, exits_cleanly, parse_args
from zerosiam_hf.collapse import WINDOW
from zerosiam_hf.comparison import dataset_key, distinct_runs, make_runs, plan_runs, run_comparison
from zerosiam_hf.config import SharedRunConfig
from zerosiam_hf.data import DataArguments, load_problems
from zerosiam_hf.methods import METHODS
from zerosiam_hf.modeling import ModelArguments, resolve_model
from zerosiam_hf.records import config_dict
from zerosiam_hf.scenarios import SCENARIOS, Scenario, check_options
from zerosiam_hf.staging import OutputArguments, staging_path
from zerosiam_hf.streams import FAMILY_COLUMN, FAMILY_ORDERS, synthetic_family
from zerosiam_hf.synthetic import SHIFTS, generate_records
from zerosiam_hf.tasks import BENCHMARKS


logger = logging.getLogger("zerosiam_hf")


@dataclass
class CompareArguments:
    """Which methods and seeds to compare, and on what."""

    methods: list[str] = field(
        default_factory=lambda: ["none", "tent", "come", "zerosiam"],
        metadata={"help": f"Methods, from {tuple(METHODS)}."},
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds, one run each per method."})
    datasets: list[str] | None = field(
        default=None,
        metadata={
            "help": "Several benchmarks (or data files) in one comparison, one table column each plus their "
            f"average, e.g. math500 college_math aime24 minerva_math ({', '.join(BENCHMARKS)}); default --dataset."
        },
    )
    scenario: str | None = field(
        default=None,
        metadata={
            "help": f"A grid over one test-time condition, one table column per cell: {', '.join(SCENARIOS)} "
            "(docs/CONDITIONS.md); the cells set their option, which is then not to be given."
        },
    )
    scenario_cells: list[str] | None = field(
        default=None,
        metadata={
            "help": "With --scenario: only these of its cells, by column name (severity1 severity3 severity5, say); "
            "default every cell. The same command with more cells and --overwrite true makes only the new cells' runs."
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Resolve the model and load every benchmark, print the runs to do, and run nothing."},
    )
    synthetic_preset: str | None = field(
        default=None,
        metadata={
            "help": f"Generate the problems from a synthetic preset ({', '.join(SHIFTS)}) instead of --dataset."
        },
    )
    synthetic_n: int = field(default=128, metadata={"help": "Number of synthetic problems to generate."})
    runs_only: bool = field(
        default=False,
        metadata={
            "help": "Run (or reuse) the runs and write no comparison: for several compare processes sharing one "
            "--output_dir (one per GPU or method, say); the same command with every method then writes it."
        },
    )

    oracle: bool = field(
        default=False,
        metadata={
            "help": "Allow a method that reads the gold answers (gold_grpo) among --methods: its rows are marked "
            "(oracle) and the tables say what that means."
        },
    )
    collapse_window: int = field(
        default=WINDOW,
        metadata={
            "help": "Answers in the running window of the collapse step: the first update after which a method's "
            "accuracy over its last N answers stays below none's on the same problems (docs/OUTPUTS.md)."
        },
    )

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}.")
        oracles = [m for m in self.methods if METHODS[m].reads_gold]
        if oracles and not self.oracle:
            raise ValueError(
                f"--methods {' '.join(oracles)}: an oracle that reads the gold answers; add --oracle true to compare "
                "it as the ceiling (its rows are marked), or leave it out."
            )
        if len(self.seeds) < 1:
            raise ValueError("--seeds needs at least one seed.")
        if self.collapse_window < 1:
            raise ValueError(f"--collapse_window must be a number of answers >= 1, got {self.collapse_window}.")
        bad = [seed for seed in self.seeds if not 0 <= seed < 2**32]  # as ZeroSiamConfig checks each run's --seed
        if bad:
            raise ValueError(f"--seeds must be integers in [0, 2**32 - 1], got {bad[0]}.")
        # A second run of the same method and seed repeats the first: the std over seeds would count it twice.
        for flag, values in (("--methods", self.methods), ("--seeds", self.seeds)):
            twice = sorted({str(v) for v in values if values.count(v) > 1})
            if twice:
                raise ValueError(f"{flag} names {', '.join(twice)} twice; give each once.")
        if self.synthetic_preset is not None and self.synthetic_preset not in SHIFTS:
            raise ValueError(f"--synthetic_preset must be one of {', '.join(SHIFTS)}; got {self.synthetic_preset!r}.")
        if self.datasets is not None and self.synthetic_preset is not None:
            raise ValueError("--datasets and --synthetic_preset exclude each other; give one of them.")
        if self.scenario is not None and self.scenario not in SCENARIOS:
            raise ValueError(f"--scenario must be one of {', '.join(SCENARIOS)}; got {self.scenario!r}.")
        if self.scenario is not None and self.datasets is not None:
            raise ValueError("--scenario and --datasets exclude each other: a scenario's cells are the columns.")
        if self.scenario_cells is not None:
            if self.scenario is None:
                raise ValueError("--scenario_cells chooses cells of a --scenario; give --scenario too.")
            SCENARIOS[self.scenario].only(self.scenario_cells)  # an unknown cell is one line now
        # A dataset's key names its table column and its runs' folder: two datasets with one key would share both,
        # and one of them would never run (a benchmark given twice, or two files of the same name in two folders).
        keys: dict[str, list[str]] = {}
        for name in self.datasets or []:
            keys.setdefault(dataset_key(name), []).append(name)
        clash = next((names for names in keys.values() if len(names) > 1), None)
        if clash:
            raise ValueError(
                f"--datasets {' and '.join(clash)} would share the column and runs folder {dataset_key(clash[0])!r}; "
                "give each benchmark once, and data files with different names."
            )


@exits_cleanly
def main(argv: list[str] | None = None) -> dict:
    """Run every method x seed (x benchmark) and write the comparison."""
    # ------------------------------------------------------------------------------------------------ arguments
    model_args, data_args, compare_args, output_args, args = parse_args(
        (ModelArguments, DataArguments, CompareArguments, OutputArguments, SharedRunConfig), argv
    )
    args.check_methods(compare_args.methods)
    scenario = SCENARIOS[compare_args.scenario] if compare_args.scenario is not None else None
    if scenario is not None:
        check_options(scenario, sys.argv[1:] if argv is None else argv)
        if compare_args.scenario_cells is not None:
            scenario = scenario.only(compare_args.scenario_cells)
    resolve_model(model_args.model)  # an unknown model is one line before any problem file is written
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.protocol != "online":
        raise ValueError("compare.py compares online accuracy; use --protocol online.")
    output_dir = args.output_dir
    config = config_dict(model_args, data_args, compare_args, output_args, args)

    # ------------------------------------------------------------------------------------------------ data
    # One entry per table column. Synthetic problems are drawn anew for each seed (shared by every method), so the
    # spread over seeds covers the test sample as well as the adapter's initialisation; a fixed dataset varies only
    # the latter. Their files are written with the runs, into the comparison's folder.
    # A scenario's cells are columns too, each its own data or run settings on the same problems.
    suite = compare_args.datasets is not None or scenario is not None
    if scenario is not None:
        columns = scenario.columns(data_args, compare_args.seeds)
    else:
        columns = {
            dataset_key(name): {seed: data_args.for_dataset(name) for seed in compare_args.seeds}
            for name in (compare_args.datasets or [data_args.dataset])
        }
    family_orders = sorted({seed_data[s].stream_order for seed_data in columns.values() for s in seed_data})
    family_orders = [order for order in family_orders if order in FAMILY_ORDERS]
    problem_sets = {}
    if compare_args.synthetic_preset is not None:
        preset = compare_args.synthetic_preset
        for seed in compare_args.seeds:
            path = staging_path(output_dir) / f"synthetic-{preset}-seed{seed}.jsonl"
            drawn = generate_records(compare_args.synthetic_n, dataclasses.replace(SHIFTS[preset], seed=seed))
            rows = [problem.as_row() for problem in drawn]
            if family_orders:  # only where the stream order reads it: the files of other comparisons stay as they were
                rows = [{**row, FAMILY_COLUMN: synthetic_family(problem)} for row, problem in zip(rows, drawn)]
                check_families(rows, preset, seed, family_orders, scenario)
            problem_sets[path] = rows
            for seed_data in columns.values():
                seed_data[seed] = dataclasses.replace(seed_data[seed], dataset=str(path))
    settings = scenario.run_settings() if scenario is not None else None
    plan = plan_runs(columns, compare_args.methods, compare_args.seeds, args, output_dir, suite, settings)
    if compare_args.dry_run:  # each run's settings were made (and so checked) by plan_runs
        distinct = distinct_runs(model_args, output_args, plan)
        return dry_run(model_args, columns, problem_sets, compare_args, Path(output_dir), scenario, distinct)
    # A stream order the data cannot give is refused now, before the cells that can run.
    for seed_data in columns.values():
        data = next(iter(seed_data.values()))
        if data.stream_order not in ("iid", "file") and Path(data.dataset) not in problem_sets:
            load_problems(data)

    # ------------------------------------------------------------------------------------------------ runs
    if compare_args.runs_only:
        records = make_runs(model_args, plan, problem_sets, output_args, output_dir)
        runs = sum(len(seeds) for methods in records.values() for seeds in methods.values())
        print(
            f"{runs} runs finished in {staging_path(output_dir)}/runs; the same command with every method and "
            f"without --runs_only writes the comparison to {output_dir}"
        )
        return {"runs": runs}

    # ------------------------------------------------------------------------------------------------ report
    result, table = run_comparison(
        model_args,
        plan,
        problem_sets,
        output_args,
        config,
        output_dir,
        suite,
        compare_args.methods,
        scenario,
        collapse_window=compare_args.collapse_window,
    )
    print(table)
    print(f"comparison and plots in {output_dir}")
    return result


def check_families(rows: list[dict], preset: str, seed: int, orders: list[str], scenario: Scenario | None) -> None:
    """Refuse synthetic problems of one family for a stream order by family, naming the presets that draw several."""
    families = {row[FAMILY_COLUMN] for row in rows}
    if len(families) > 1:
        return
    several = [name for name, shift in SHIFTS.items() if len(set(shift.operations)) > 1]
    fix = (
        "draw more with --synthetic_n"
        if preset in several
        else f"use --synthetic_preset {' or '.join(several)}, whose problems use several operations"
    )
    cells = f" (cells of --scenario {scenario.name})" if scenario is not None else ""
    raise ValueError(
        f"--stream_order {' and '.join(orders)}{cells} needs problems of two families or more, and --synthetic_preset "
        f"{preset} drew only {next(iter(families))!r} (seed {seed}); {fix}."
    )


def dry_run(
    model_args: ModelArguments,
    columns: dict,
    problem_sets: dict,
    compare_args: CompareArguments,
    output_dir: Path,
    scenario: Scenario | None,
    distinct: int,
) -> dict:
    """Resolve the model and every benchmark (loading and validating its problems; synthetic ones are drawn, not
    written) and list the runs, with a scenario's cells and their settings; run nothing. `distinct`: how many of the
    runs are made, the others being shared between cells (`comparison.distinct_runs`)."""
    spec = resolve_model(model_args.model)
    plan = {}
    for key, seed_data in columns.items():
        data = next(iter(seed_data.values()))
        if Path(data.dataset) in problem_sets:  # drawn here; the file is written with the runs
            source = f"the synthetic preset {compare_args.synthetic_preset}"
            plan[key] = {"problems": len(problem_sets[Path(data.dataset)]), "checker": data.checker, "source": source}
        else:
            problems, identity = load_problems(data)
            source = identity.get("path") or identity.get("id")
            plan[key] = {"problems": len(problems), "checker": identity["checker"], "source": source}
        line = f"{plan[key]['problems']} problems from {plan[key]['source']}, checker {plan[key]['checker']}"
        if scenario is None:
            print(f"{key}: {line}")
            continue
        cell = next(cell for cell in scenario.cells if cell.key == key)
        plan[key]["settings"] = {**cell.data, **cell.run}
        runs = f"runs {' '.join(compare_args.methods)} x seeds {' '.join(map(str, compare_args.seeds))}"
        print(f"{key} ({cell.flags}): {line}; {runs}")
    runs = len(columns) * len(compare_args.methods) * len(compare_args.seeds)
    shared = f" ({distinct} made, {runs - distinct} shared between cells)" if distinct < runs else ""
    print(f"model {spec['name_or_path']}; {runs} runs{shared} into {output_dir}/runs (dry run: nothing was run)")
    return {"model": spec, "plan": plan, "runs": runs, "made": distinct}


console = console_entry(main)  # the `zerosiam-<name>` entry point


if __name__ == "__main__":
    main()
