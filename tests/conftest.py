"""Shared fixtures: a tiny random Llama with a byte-level tokenizer, GSM8K-format files, one adapt.py run; all made in
code. Helper functions are in helpers.py."""

import os

import pytest
import torch
from datasets import Dataset
from helpers import DATA_DIR, PROBLEMS, adapt_argv, make_model, make_tokenizer, write_problems

from zerosiam_hf.checkers import NumericChecker
from zerosiam_hf.commands import adapt
from zerosiam_hf.data import build_prompts, gold_answers


# A benchmark named without a file is read from $ZEROSIAM_DATA_DIR, else the hub, which tests never reach: point it at
# the local copy before any test or subprocess starts.
if DATA_DIR.is_dir():
    os.environ.setdefault("ZEROSIAM_DATA_DIR", str(DATA_DIR))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A saved tiny model folder, loadable with --model <folder>."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = make_tokenizer()
    make_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def problems():
    """The helpers' problems as `load_problems` returns them: question, answer and index."""
    return Dataset.from_list([{"question": q, "answer": a, "index": i} for i, (q, a) in enumerate(PROBLEMS)])


@pytest.fixture(scope="module")
def prompts(problems, tokenizer):
    return build_prompts(problems, tokenizer, "Solve.", max_prompt_length=512)


@pytest.fixture(scope="module")
def gold(problems):
    return gold_answers(problems, NumericChecker())


@pytest.fixture
def problems_file(tmp_path) -> str:
    """Six GSM8K-format problems as a jsonl file."""
    return write_problems(tmp_path / "problems.jsonl", [{"question": q, "answer": a} for q, a in PROBLEMS])


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny tensors on a shared 2-core CPU: one intra-op thread, since OpenMP hand-offs would dominate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Never reach the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def adapted_run(tmp_path_factory, tiny_model_dir):
    """One online ZeroSiam run of adapt.py over the six PROBLEMS."""
    folder = tmp_path_factory.mktemp("adapt")
    dataset = write_problems(folder / "problems.jsonl", [{"question": q, "answer": a} for q, a in PROBLEMS])
    output_dir = folder / "run"
    record = adapt.main(adapt_argv(tiny_model_dir, dataset, output_dir))
    return {"record": record, "output_dir": output_dir, "dataset": dataset, "model_dir": tiny_model_dir}
