"""Test problems through `datasets`: named benchmarks and generic files, validation, identity, and the prompts the
model sees."""

import codecs
import csv
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pyarrow
import pyarrow.parquet
from datasets import Dataset

from .checkers import CHECKERS, make_checker
from .noise import NOISE_KINDS, SEVERITIES, noisy_dataset
from .streams import FAMILY_COLUMN, FAMILY_ORDERS, STREAM_ORDERS, ordered_stream
from .tasks import BENCHMARKS, CHECKER_INSTRUCTIONS, question_prompt_ids


logger = logging.getLogger(__name__)

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
DEFAULT_SPLIT = "test"


@dataclass
class DataArguments:
    """Which unlabeled test prompts to use and how to present them."""

    dataset: str = field(
        default="gsm8k",
        metadata={
            "help": f"A benchmark ({', '.join(BENCHMARKS)}: read from $ZEROSIAM_DATA_DIR/<name>/ when that is set, "
            "else from the hub), a hub id, a folder with <split>.jsonl, or a .jsonl/.json/.parquet/.csv file with "
            "`question` and `answer` columns."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    split: str = field(
        default=DEFAULT_SPLIT,
        metadata={"help": "Split of a benchmark, a hub dataset or a folder (<split>.jsonl) to adapt and evaluate on."},
    )
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N rows (a fixed subset)."})
    instruction: str | None = field(
        default=None,
        metadata={
            "help": "Text appended to each question in the user message; default: the benchmark's own "
            "(docs/PAPER_BENCHMARKS.md), else the checker's (GSM8K's `#### <number>` for numeric, the boxed one for "
            "math)."
        },
    )
    checker: str = field(
        default="auto",
        metadata={
            "help": f"Answer checker, one of auto, {', '.join(CHECKERS)}: numeric compares the number after '#### ' "
            "(GSM8K), math compares LaTeX answers with math-verify; auto takes the benchmark's (numeric for files)."
        },
    )
    check_timeout: float = field(
        default=5.0, metadata={"help": "Seconds one math answer check may take; one that runs over counts as wrong."}
    )
    allow_unscorable_golds: bool = field(
        default=False,
        metadata={
            "help": "Run on a file some of whose gold answers the checker cannot match, not even with themselves "
            "(checked when a file is loaded with --checker math); those rows count as wrong. Without it such a "
            "file is refused, naming the rows."
        },
    )
    noise: str | None = field(
        default=None,
        metadata={
            "help": f"Noise added to every question after loading, the gold answers untouched: one of "
            f"{', '.join(NOISE_KINDS)} (docs/CONDITIONS.md); default none."
        },
    )
    noise_severity: int | None = field(
        default=None, metadata={"help": "How heavy the --noise is, 1 (barely visible) to 5 (heavy); needs --noise."}
    )
    noise_seed: int = field(
        default=0,
        metadata={"help": "Seed of the --noise: the same seed gives every problem the same noised question."},
    )
    stream_order: str = field(
        default="iid",
        metadata={
            "help": f"Order of the test stream, one of {', '.join(STREAM_ORDERS)}: iid is the trainer's shuffle by "
            "--seed (the default, as before); file keeps the file's order; blocked and interleaved group the rows' "
            "`family` field; by_answer sorts by the gold's magnitude, read only to order the stream "
            "(docs/CONDITIONS.md)."
        },
    )
    stream_block: int | None = field(
        default=None,
        metadata={
            "help": "With --stream_order blocked, prompts per block (a shift every N); default each family whole."
        },
    )

    def __post_init__(self):
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"--max_samples must be a positive integer, got {self.max_samples}.")
        if self.checker not in ("auto", *CHECKERS):
            raise ValueError(f"--checker must be one of auto, {', '.join(CHECKERS)}; got {self.checker!r}.")
        if not self.check_timeout > 0:
            raise ValueError(f"--check_timeout must be a positive number of seconds, got {self.check_timeout}.")
        self._check_conditions()
        # Resolved here, so that run records show the instruction and checker a run really used.
        benchmark = BENCHMARKS.get(self.dataset)
        if self.checker == "auto":
            self.checker = benchmark.checker if benchmark else "numeric"
        if self.instruction is None:  # follows the checker: math answers asked for as `#### <number>` score 0 strict
            own = benchmark is not None and benchmark.checker == self.checker
            self.instruction = benchmark.instruction if own else CHECKER_INSTRUCTIONS[self.checker]

    def _check_conditions(self) -> None:
        """Refuse a --noise or --stream_order setting that cannot work, naming the flag."""
        if self.noise is not None and self.noise not in NOISE_KINDS:
            raise ValueError(f"--noise must be one of {', '.join(NOISE_KINDS)}; got {self.noise!r}.")
        if self.noise is not None and self.noise_severity not in SEVERITIES:
            raise ValueError(f"--noise {self.noise} needs --noise_severity 1 to 5; got {self.noise_severity}.")
        if self.noise is None and self.noise_severity is not None:
            raise ValueError(f"--noise_severity {self.noise_severity} without --noise; name a kind with --noise.")
        if self.stream_order not in STREAM_ORDERS:
            raise ValueError(f"--stream_order must be one of {', '.join(STREAM_ORDERS)}; got {self.stream_order!r}.")
        if self.stream_block is not None and self.stream_order != "blocked":
            raise ValueError(f"--stream_block {self.stream_block} needs --stream_order blocked; drop it, or add that.")
        if self.stream_block is not None and self.stream_block < 1:
            raise ValueError(f"--stream_block must be a positive number of prompts, got {self.stream_block}.")

    def for_dataset(self, name: str) -> "DataArguments":
        """The same settings for another dataset; an instruction or checker that was the old dataset's default
        becomes the new one's (one given explicitly is kept)."""
        default = DataArguments(dataset=self.dataset)
        changes = {"dataset": name}
        if self.instruction == DataArguments(dataset=self.dataset, checker=self.checker).instruction:
            changes["instruction"] = None
        if self.checker == default.checker:
            changes["checker"] = "auto"
        return dataclasses.replace(self, **changes)

    def make_checker(self):
        """The answer checker this data is scored with."""
        return make_checker(self.checker, self.check_timeout)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _find_file(source: str, split: str) -> Path | None:
    """The local file behind `source`, or None when `source` names a hub dataset."""
    path = Path(source)
    if path.is_symlink() and _is_link_loop(path):
        raise ValueError(f"--dataset {source}: a symbolic link loop; point the link at a file.")
    if source in BENCHMARKS:
        folder = os.environ.get("ZEROSIAM_DATA_DIR")
        file = Path(folder, source, f"{split}.jsonl") if folder else None
        return file if file is not None and file.is_file() else None
    if path.is_dir():
        matches = [path / f"{split}{suffix}" for suffix in FILE_BUILDERS if (path / f"{split}{suffix}").is_file()]
        if not matches:
            raise ValueError(f"--dataset {source}: no {split}.jsonl/.json/.parquet/.csv in that folder.")
        return matches[0]
    if path.suffix.lower() in FILE_BUILDERS:
        if split != DEFAULT_SPLIT:  # a file is one split: the flag would be recorded but mean nothing
            raise ValueError(
                f"--split {split}: --dataset {source} is one file, with no splits; drop --split, or give a folder "
                f"that holds {split}.jsonl."
            )
        if not path.is_file():
            raise ValueError(f"--dataset {source}: no such file; check the path.")
        if not os.access(path, os.R_OK):
            raise ValueError(f"--dataset {source}: the file is not readable; check its permissions.")
        return path
    if source.count("/") == 1:
        return None
    raise ValueError(
        f"--dataset {source!r} is neither a file (.jsonl, .json, .parquet, .csv), a folder, a benchmark "
        f"({', '.join(BENCHMARKS)}) nor a hub id."
    )


def _data_dir_fix(name: str, split: str) -> str:
    """How to give a benchmark its local copy, with what ZEROSIAM_DATA_DIR holds now."""
    folder = os.environ.get("ZEROSIAM_DATA_DIR")
    now = f"now {folder}, which lacks it" if folder else "now unset"
    return f"set ZEROSIAM_DATA_DIR to a folder holding {name}/{split}.jsonl ({now})"


def _hub_source(args: DataArguments) -> tuple[str, str | None, str]:
    """(id, config, split) to load from the hub; a benchmark with no hub copy asks for its file instead."""
    benchmark = BENCHMARKS.get(args.dataset)
    if benchmark is None:
        return args.dataset, args.dataset_config, args.split
    if benchmark.hub is None:
        raise ValueError(
            f"--dataset {args.dataset}: no hub copy is known; get its {args.split}.jsonl ({benchmark.source}) and "
            f"{_data_dir_fix(args.dataset, args.split)}."
        )
    hub_id, config, hub_split = benchmark.hub
    return hub_id, config, hub_split if hub_split and args.split == DEFAULT_SPLIT else args.split


def _is_link_loop(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as error:
        return error.errno == errno.ELOOP
    return False


def _check_utf8(file: Path) -> None:
    """Text formats must be UTF-8: datasets reads other bytes without complaint and fails later, nameless."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"--dataset {file}: not UTF-8 text (byte {block[error.start]:#04x} at offset "
                    f"{offset + error.start}); save the file as UTF-8."
                ) from None
            offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ValueError(f"--dataset {file}: not UTF-8 text (it ends inside a character); save it as UTF-8.") from None


def _check_questions(dataset: Dataset, source: str, row_name: Callable[[int], str]) -> None:
    for i, question in enumerate(dataset["question"]):
        if not isinstance(question, str) or not question.strip():
            what = "empty" if isinstance(question, str) else f"{question!r}, not text"
            raise ValueError(f"--dataset {source}: {row_name(i)}: the question is {what}; every row needs a question.")


def _check_cache(source: str) -> None:
    """datasets writes every file it loads, a local one too, as Arrow files in its cache (under HOME unless
    HF_DATASETS_CACHE or HF_HOME say otherwise); a cache it cannot write would read as a data file it cannot read."""
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        problem = None if os.access(cache, os.W_OK) else "not writable"
    except OSError as error:
        problem = error.strerror or type(error).__name__
    if problem:
        raise ValueError(
            f"--dataset {source}: datasets keeps its copy of the data in {cache}, which cannot be written "
            f"({problem}); point HF_DATASETS_CACHE (or HF_HOME) at a writable folder."
        )


def _row_name(file: Path | None) -> Callable[[int], str]:
    """How messages name row `index` (0-based) of the data: "line N" of a JSON-lines or CSV file, where each row has a
    line of its own (blank lines skipped, as datasets skips them), else "row N" (a JSON array, parquet, the hub)."""
    lines = functools.cache(lambda: _row_lines(file) if file is not None else [])
    return lambda index: f"line {lines()[index]}" if index < len(lines()) else f"row {index + 1}"


def _row_lines(file: Path) -> list[int]:
    """The 1-based line on which each row of a JSON-lines or CSV file starts; empty for other files."""
    suffix = file.suffix.lower()
    if suffix in (".json", ".jsonl"):
        with open(file, encoding="utf-8") as handle:
            lines = list(handle)
        if suffix == ".json":
            try:
                json.loads("".join(lines))
                return []  # one JSON document: its rows are no lines
            except json.JSONDecodeError:
                pass
        return [number for number, line in enumerate(lines, start=1) if line.strip()]
    if suffix == ".csv":
        starts, previous = [], 0
        with open(file, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            for record in reader:  # a quoted value may span lines: a row starts after the previous one ends
                if record:
                    starts.append(previous + 1)
                previous = reader.line_num
        return starts[1:]  # the first is the header
    return []


def _parquet_without_rows(file: Path) -> bool:
    # datasets words "no rows" as "corresponds to no data" for text formats, but as an Arrow batch-size error for a
    # parquet file with a schema and no rows: ask the file's own metadata.
    if file.suffix.lower() != ".parquet":
        return False
    try:
        return pyarrow.parquet.ParquetFile(file).metadata.num_rows == 0
    except pyarrow.ArrowException:
        return False


def _first_bad_json_line(file: Path) -> str | None:
    """Where a JSON or JSON-lines file stops being JSON (datasets' own error gives no line), or None."""
    suffix = file.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        return None
    with open(file, encoding="utf-8") as handle:
        lines = list(enumerate(handle, start=1))
    bad_line = None
    for number, line in lines:
        try:
            if line.strip():
                json.loads(line)
        except json.JSONDecodeError as error:
            bad_line = f"line {number} is not valid JSON ({error.msg} at column {error.colno})"
            break
    if suffix == ".json" and bad_line is not None:  # one document over many lines, or JSON lines (datasets reads both)
        try:
            json.loads("".join(line for _, line in lines))
        except json.JSONDecodeError as error:
            return f"not valid JSON at line {error.lineno}, column {error.colno} ({error.msg})"
        return None
    return bad_line


def file_sha256(args: DataArguments) -> str | None:
    """The sha256 of the data file `args` reads (as `load_problems` records it), or None for a hub dataset."""
    file = _find_file(args.dataset, args.split)
    return None if file is None else _sha256(file)


def load_problems(args: DataArguments) -> tuple[Dataset, dict]:
    """Load and validate the problems; return them (columns `question`, `answer`, `index`) and their identity.

    `answer` holds the field the gold is read from (for Minerva the solution); `gold_answers` reads it.
    """
    checker = args.make_checker()
    try:
        dataset, identity, _ = load_scored_problems(args, checker)
    finally:
        checker.close()
    return dataset, identity


def load_scored_problems(args: DataArguments, checker) -> tuple[Dataset, dict, dict]:
    """`load_problems` and the gold answers by row index as `checker` parsed them to validate them
    (`gold_answers`): a caller that scores with `checker` parses each gold once."""
    file = _find_file(args.dataset, args.split)
    _check_cache(args.dataset)
    dataset, identity = _read_file(file) if file is not None else _read_hub(args)
    benchmark = BENCHMARKS.get(args.dataset)
    identity.update(benchmark=benchmark.name if benchmark else None, checker=args.checker, split=args.split)
    question, answer = (benchmark.question_field, benchmark.answer_field) if benchmark else ("question", "answer")
    missing = {question, answer} - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"--dataset {args.dataset}: rows lack the column(s) {', '.join(sorted(missing))}; "
            f"each row needs `{question}` and `{answer}`."
        )
    identity["rows"] = len(dataset)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"--dataset {args.dataset}: the {args.split} split is empty; give a file with problems.")
    # A row's family orders the stream (--stream_order blocked, interleaved) and is dropped once it has.
    family = [FAMILY_COLUMN] if args.stream_order in FAMILY_ORDERS and FAMILY_COLUMN in dataset.column_names else []
    dataset = dataset.select_columns([question, answer, *family])
    if (question, answer) != ("question", "answer"):
        dataset = dataset.rename_columns({question: "question", answer: "answer"})
    dataset = dataset.add_column("index", list(range(len(dataset))))
    # Messages about one row name the file it is in, when --dataset names a benchmark or a folder.
    source = args.dataset if file is None or Path(args.dataset) == file else f"{args.dataset} ({file})"
    row_name = _row_name(file)
    gold = _checked_gold(dataset, args, checker, source, row_name, identity)
    _check_questions(dataset, source, row_name)
    identity["selected"] = len(dataset)
    if args.noise is not None:  # the questions only: the gold answers above are parsed from the untouched rows
        dataset = noisy_dataset(dataset, args.noise, args.noise_severity, args.noise_seed)
        identity["noise"] = {"kind": args.noise, "severity": args.noise_severity, "seed": args.noise_seed}
    dataset = ordered_stream(dataset, args.stream_order, args.stream_block, gold, source, row_name)
    if family:
        dataset = dataset.remove_columns(FAMILY_COLUMN)
    return dataset, identity, gold


def _read_file(file: Path) -> tuple[Dataset, dict]:
    """The rows of a data file and its identity; a file that cannot be read as problems is one line naming it."""
    if file.stat().st_size == 0:
        raise ValueError(f"--dataset {file}: the file is empty; give a file with problems.")
    if file.suffix.lower() != ".parquet":
        _check_utf8(file)
    try:
        dataset = datasets.load_dataset(FILE_BUILDERS[file.suffix.lower()], data_files=str(file), split="train")
    except Exception as error:  # datasets raises many types for a malformed file
        if "corresponds to no data" in str(error) or _parquet_without_rows(file):
            raise ValueError(f"--dataset {file}: the file holds no rows; give a file with problems.") from None
        bad_line = _first_bad_json_line(file)
        if bad_line is not None:
            raise ValueError(f"--dataset {file}: {bad_line}; fix that line.") from None
        raise ValueError(f"--dataset {file}: could not be read as {file.suffix} ({type(error).__name__}).") from error
    return dataset, {"source": "file", "path": str(file.resolve()), "sha256": _sha256(file)}


def _read_hub(args: DataArguments) -> tuple[Dataset, dict]:
    """The rows of a hub dataset and its identity (its fingerprint, and its commit when the hub answers)."""
    hub_id, config, split = _hub_source(args)
    try:
        dataset = datasets.load_dataset(hub_id, config, split=split)
    except Exception as error:
        local = f"{_data_dir_fix(args.dataset, args.split)}, or " if args.dataset in BENCHMARKS else ""
        raise ValueError(
            f"--dataset {args.dataset}: could not load {hub_id} from the hub ({type(error).__name__}); "
            f"without hub access {local}give a file with --dataset."
        ) from error
    identity = {"source": "hub", "id": hub_id, "config": config, "fingerprint": dataset._fingerprint}
    identity["revision"] = _hub_revision(hub_id)
    return dataset, identity


def _checked_gold(dataset: Dataset, args: DataArguments, checker, source: str, row_name, identity: dict) -> dict:
    """Every gold parsed by `checker` before the model is loaded; a user's file also gets its golds audited (those
    no answer can match are refused, or with --allow_unscorable_golds recorded in `identity` and counted wrong)."""
    try:
        gold = gold_answers(dataset, checker, row_name)
        # A named benchmark's golds are audited by the tests (test_gold_audit); a user's file gets its audit here.
        unscorable = [] if args.dataset in BENCHMARKS else checker.unscorable(gold)
    except ValueError as error:
        raise ValueError(f"--dataset {source}: {error}.") from None
    if unscorable:
        rows = ", ".join(map(row_name, unscorable[:20])) + (", ..." if len(unscorable) > 20 else "")
        problem = (
            f"--dataset {source}: {len(unscorable)} of {len(gold)} gold answers cannot be matched by the "
            f"{args.checker} checker, not even by themselves ({rows}), so no answer can score those rows right"
        )
        if not args.allow_unscorable_golds:
            raise ValueError(f"{problem}; fix them, or pass --allow_unscorable_golds true to count them as wrong.")
        logger.warning("%s; they count as wrong (--allow_unscorable_golds).", problem)
        identity["unscorable_golds"] = unscorable
    return gold


def _hub_revision(hub_id: str) -> str | None:
    """The commit of a hub dataset, when the hub answers."""
    try:
        from huggingface_hub import dataset_info

        return dataset_info(hub_id).sha
    except Exception:  # offline or private: the fingerprint still identifies the data
        return None


def build_prompts(dataset: Dataset, tokenizer, instruction: str, max_prompt_length: int) -> Dataset:
    """Tokenize each question once into `prompt_ids` (`question_prompt_ids`, cut to `max_prompt_length`).

    The result holds `index`, `prompt_ids`, the uncut `prompt_length`, and the `question` and `instruction` that make
    the prompt (a method may ask the model again with another wording: Self-Harmony's paraphrase); the gold answers
    are dropped here, so that nothing downstream of this function (adaptation included) can feed them to the model.
    """

    def encode(row):
        ids = question_prompt_ids(tokenizer, row["question"], instruction)
        # Cutting from the left keeps the end of the question and the generation prompt.
        return {"prompt_ids": ids[-max_prompt_length:], "prompt_length": len(ids), "instruction": instruction or ""}

    prompts = dataset.map(encode, remove_columns=["answer"], desc="Tokenizing prompts")
    cut = prompts_cut(prompts)
    if cut:
        logger.warning(
            "%d of %d prompts are longer than %d tokens and were cut from the left.",
            cut,
            len(prompts),
            max_prompt_length,
        )
    return prompts


def prompts_cut(prompts: Dataset) -> int:
    """How many prompts `build_prompts` cut from the left to fit `max_prompt_length`."""
    return sum(length > len(ids) for length, ids in zip(prompts["prompt_length"], prompts["prompt_ids"]))


def gold_answers(dataset: Dataset, checker, row_name: Callable[[int], str] | None = None) -> dict:
    """Gold answers by row index, as `checker` compares them; for scoring only. An error names the row as
    `row_name(index)` does (default: "row N", 1-based)."""
    row_name = row_name or _row_name(None)
    gold = {}
    for index, answer in zip(dataset["index"], dataset["answer"]):
        try:
            gold[index] = checker.parse_gold(str(answer))
        except ValueError as error:
            raise ValueError(f"{row_name(index)}: {error}") from None
    return gold
