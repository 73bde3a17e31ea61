"""Tests for the evaluate command: base and adapted accuracy, a math benchmark, and one-line errors for bad flags and
bad adapter folders."""

import hashlib
import json
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers import (
    PROBLEMS,
    assert_usage_error,
    flags,
    read_jsonl,
    write_problems,
)
from safetensors.torch import load_file, save_file

from zerosiam_hf import PREDICTOR_NAME, ModelArguments, load_adapted_model, load_model_and_tokenizer
from zerosiam_hf.checkers import MathChecker
from zerosiam_hf.commands import evaluate


# ------------------------------------------------------------------------------------------------------- evaluate
def test_evaluate_reports_base_and_adapted_accuracy(adapted_run, tmp_path):
    out = tmp_path / "eval"
    argv = flags(model=adapted_run["model_dir"], dataset=adapted_run["dataset"], adapter=adapted_run["output_dir"])
    record = evaluate.main([*argv, *flags(max_new_tokens=4, output_dir=out)])
    saved = json.loads((out / "eval.json").read_text())
    assert saved["results"] == record["results"]
    assert saved["adapter"] == str(adapted_run["output_dir"].resolve())
    assert saved["data"]["sha256"] == hashlib.sha256(Path(adapted_run["dataset"]).read_bytes()).hexdigest()
    for variant in ("base", "adapted"):
        summary = saved["results"][variant]
        assert summary["n"] == len(PROBLEMS)
        assert summary["accuracy_strict"] is not None and summary["accuracy_flexible"] is not None
        predictions = read_jsonl(out / f"predictions-{variant}.jsonl")
        assert [p["index"] for p in predictions] == list(range(len(PROBLEMS)))
        flexible = 100 * sum(p["correct_flexible"] for p in predictions) / len(predictions)
        assert summary["accuracy_flexible"] == pytest.approx(flexible)
    base_only = tmp_path / "base"
    argv = flags(
        model=adapted_run["model_dir"], dataset=adapted_run["dataset"], max_new_tokens=4, output_dir=base_only
    )
    evaluate.main(argv)
    # checking the adapter on the model before the base pass leaves the base model as it was
    assert (out / "predictions-base.jsonl").read_bytes() == (base_only / "predictions-base.jsonl").read_bytes()


def test_evaluate_scores_a_math_benchmark_with_math_verify(tiny_model_dir, tmp_path, monkeypatch):
    rows = [{"problem": q, "solution": "...", "answer": answer} for q, answer in zip(QUESTIONS, GOLDS)]
    (tmp_path / "math500").mkdir()
    write_problems(tmp_path / "math500" / "test.jsonl", rows)
    monkeypatch.setenv("ZEROSIAM_DATA_DIR", str(tmp_path))
    out = tmp_path / "eval"
    record = evaluate.main([*flags(model=tiny_model_dir, dataset="math500", max_new_tokens=4, output_dir=out)])
    assert record["data"]["benchmark"] == "math500" and record["data"]["checker"] == "math"
    assert record["results"]["base"]["check_timeouts"] == 0
    predictions = read_jsonl(out / "predictions-base.jsonl")
    # Rescoring each completion with a fresh math checker gives the recorded scores, and a boxed gold scores right.
    checker = MathChecker()
    try:
        rescored = checker.score([p["completion"] for p in predictions], GOLDS)
        assert [(p["correct_strict"], p["correct_flexible"]) for p in predictions] == [
            (r["correct_strict"], r["correct_flexible"]) for r in rescored
        ]
        assert all(r["correct_strict"] for r in checker.score([f"\\boxed{{{g}}}" for g in GOLDS], GOLDS))
    finally:
        checker.close()


QUESTIONS = ["What is one half?", "Give the interval of x <= 2.", "What is 90 degrees in degrees?"]
GOLDS = ["\\frac{1}{2}", "(-\\infty, 2]", "90^\\circ"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--skip_base", "true"], "--skip_base needs --adapter"),
        (["--adapter", "no/such/run"], "--adapter no/such/run: no adapter_config.json there"),
        (["--batch_size", "0"], "--batch_size must be a positive integer, got 0"),
    ],
)
def test_evaluate_usage_errors(capsys, tiny_model_dir, problems_file, tmp_path, argv, expected):
    call = partial(evaluate.main, ["--model", tiny_model_dir, "--dataset", problems_file, *argv])
    assert_usage_error(capsys, call, expected)


# ------------------------------------------------------------------------------------------------- bad adapter folders
def corrupt(adapter: Path, target: Path, how: str) -> Path:
    """A copy of a saved adapter, broken in one way."""
    shutil.copytree(adapter, target)
    weights, config_file = target / "adapter_model.safetensors", target / "adapter_config.json"
    tensors = load_file(weights)
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "tent_weights":  # a zerosiam config over weights that hold no predictor
        save_file({name: t for name, t in tensors.items() if PREDICTOR_NAME not in name}, weights)
    elif how == "rank":
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "r": 16}))
    elif how == "config_not_json":
        config_file.write_text("{'r': 8}")
    elif how == "nan":
        name = sorted(name for name in tensors if "lora_B" in name)[0]
        save_file({**tensors, name: torch.full_like(tensors[name], float("nan"))}, weights)
    return target


BAD_ADAPTERS = {
    "truncated": "adapter_model.safetensors cannot be read (Error while deserializing header",
    "tent_weights": "its weights do not fit its adapter_config.json or this model (KeyError",
    "rank": "its weights do not fit its adapter_config.json or this model (RuntimeError: size mismatch for",
    "nan": "1 of 17 tensors hold NaN or Inf",
    "config_not_json": "adapter_config.json is not valid JSON (Expecting property name enclosed in double quotes: "
    "line 1 column 2 (char 1)); give the output_dir of adapt.py",
}


@pytest.mark.parametrize("how", list(BAD_ADAPTERS))
def test_bad_adapter_folders_give_one_line(capsys, adapted_run, tmp_path, how):
    adapter = corrupt(adapted_run["output_dir"], tmp_path / "adapter", how)
    expected = f"--adapter {adapter}: {BAD_ADAPTERS[how]}"
    base, _, _ = load_model_and_tokenizer(ModelArguments(model=adapted_run["model_dir"]))
    with pytest.raises(ValueError) as error:
        load_adapted_model(base, str(adapter))
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)

    out = tmp_path / "eval"
    argv = flags(model=adapted_run["model_dir"], dataset=adapted_run["dataset"], adapter=adapter, output_dir=out)
    assert_usage_error(capsys, partial(evaluate.main, [*argv, *flags(max_new_tokens=4)]), expected)
    assert not out.exists() and not out.with_name("eval.partial").exists()
