"""Tests for the evaluate command: base and adapted accuracy, a math benchmark, one-line errors for bad flags and bad
adapter folders, and the sampled protocol (mean@k, pass@k, maj@k beside the greedy accuracy)."""

import hashlib
import json
import shutil
from functools import partial
from itertools import combinations
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

from zerosiam_hf import PREDICTOR_NAME, ModelArguments, checkers, load_adapted_model, load_model_and_tokenizer
from zerosiam_hf.checkers import MathChecker, NumericChecker
from zerosiam_hf.commands import evaluate
from zerosiam_hf.generation import generate_batches, greedy_config, pad, sampling_config
from zerosiam_hf.scoring import majority_correct, pass_at, sampled_accuracy


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


# ------------------------------------------------------------------------------------------------- sampled protocol
def test_sampled_metrics_match_the_formulas_by_hand():
    # three problems, four samples each: 1, 0 and 3 right; only the third one's majority answer is right
    correct = [[True, False, False, False], [False, False, False, False], [True, True, True, False]]
    summary = sampled_accuracy(correct, [False, False, True])
    assert summary["k"] == 4
    assert summary["mean_at_k"] == pytest.approx(100 * (1 / 4 + 0 + 3 / 4) / 3)
    assert summary["pass_at_k"] == pytest.approx(100 * 2 / 3)  # at least one right: problems 1 and 3
    assert summary["maj_at_k"] == pytest.approx(100 / 3)
    # pass@2: 1 - C(4 - c, 2) / C(4, 2) per problem = 1 - 3/6, 1 - 6/6, 1 - 0/6
    assert summary["pass_at"]["2"] == pytest.approx(100 * (0.5 + 0 + 1) / 3)
    assert summary["pass_at"]["1"] == pytest.approx(summary["mean_at_k"])  # pass@1 is the mean share right
    assert list(summary["pass_at"]) == ["1", "2", "4"]


@pytest.mark.parametrize(("n", "c", "k"), [(16, 0, 1), (16, 3, 1), (16, 3, 4), (16, 13, 4), (5, 2, 5), (7, 4, 3)])
def test_pass_at_is_the_share_of_k_subsets_holding_a_right_answer(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(samples, k))
    assert pass_at(n, c, k) == pytest.approx(sum(any(subset) for subset in subsets) / len(subsets))


def test_majority_goes_through_the_checker_and_takes_the_first_voters_score():
    same = NumericChecker().same_answer
    samples = [
        {"pred_flexible": "3", "correct_flexible": False},
        {"pred_flexible": "0.5", "correct_flexible": True},
        {"pred_flexible": "1/2", "correct_flexible": True},  # the same number as 0.5: two votes
        {"pred_flexible": None, "correct_flexible": False},
    ]
    assert majority_correct(samples, same) == ("0.5", True)
    assert majority_correct([{"pred_flexible": None, "correct_flexible": False}], same) == (None, False)


def test_sampling_config_overrides_a_top_p_the_model_ships(tiny_model_dir, prompts):
    model, tokenizer, _ = load_model_and_tokenizer(ModelArguments(model=tiny_model_dir))
    model.generation_config.top_p = 1e-6  # shipped: keep only the likeliest token, i.e. answer greedily
    ids, mask = pad(prompts["prompt_ids"], tokenizer.pad_token_id, side="left")
    greedy = greedy_config(model, tokenizer, 6)
    torch.manual_seed(0)
    sampled = generate_batches(model, [(ids, mask)], sampling_config(greedy, 5.0, top_p=1.0), samples=2)
    assert sampled != [c for c in generate_batches(model, [(ids, mask)], greedy) for _ in range(2)]


SAMPLED = flags(num_samples=4, temperature=1.0, top_p=0.9, seed=0)


def answer_by_length(text: str, gold) -> dict:
    """A stand-in score that a tiny random model gets right about a third of the time: the answer is the text's
    length mod 3, and 0 is right."""
    answer = str(len(text) % 3)
    return {
        "pred_strict": answer,
        "pred_flexible": answer,
        "correct_strict": answer == "0",
        "correct_flexible": answer == "0",
    }


def test_sampled_evaluation_reports_mean_pass_and_maj_at_k_beside_greedy(
    capsys, monkeypatch, tiny_model_dir, problems_file, tmp_path
):
    monkeypatch.setattr(checkers, "score_answer", answer_by_length)
    common = flags(model=tiny_model_dir, dataset=problems_file, max_new_tokens=4)
    greedy = evaluate.main([*common, *flags(output_dir=tmp_path / "greedy")])
    unset = {"temperature": None, "top_p": None, "seed": None}
    assert greedy["protocol"] == {"decoding": "greedy", "num_samples": 1, **unset}
    assert "sampled" not in greedy["results"]["base"]
    greedy_predictions = read_jsonl(tmp_path / "greedy" / "predictions-base.jsonl")
    assert not any("samples" in p for p in greedy_predictions)

    capsys.readouterr()
    record = evaluate.main([*common, *SAMPLED, *flags(output_dir=tmp_path / "sampled")])
    saved = json.loads((tmp_path / "sampled" / "eval.json").read_text())
    assert saved["protocol"] == {"decoding": "sampled", "num_samples": 4, "temperature": 1.0, "top_p": 0.9, "seed": 0}
    assert record["results"] == saved["results"]
    summary = saved["results"]["base"]
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("base: greedy strict") and "mean@4" in line and "pass@4" in line and "maj@4" in line
    assert "(4 samples, temperature 1, top-p 0.9, seed 0, " in line
    # beside the samples, the greedy accuracy and answers are the greedy run's
    greedy_keys = set(greedy["results"]["base"]) - {"generate_seconds"}
    assert {key: summary[key] for key in greedy_keys} == {key: greedy["results"]["base"][key] for key in greedy_keys}
    predictions = read_jsonl(tmp_path / "sampled" / "predictions-base.jsonl")
    sample_keys = {"samples", "majority_answer", "majority_correct"}
    assert [{k: v for k, v in p.items() if k not in sample_keys} for p in predictions] == greedy_predictions
    # one record per problem with its k answers and their scores; the summary is theirs
    assert [len(p["samples"]) for p in predictions] == [4] * len(PROBLEMS)
    answers = [[s["pred_flexible"] for s in p["samples"]] for p in predictions]
    correct = [[s["correct_flexible"] for s in p["samples"]] for p in predictions]
    assert 0 < sum(map(sum, correct)) < 4 * len(PROBLEMS)  # a mix of right and wrong samples
    # the most frequent answer, ties to the one seen first; here the answers are 0, 1, 2 and 0 is right
    majority = [max(a, key=lambda x: (a.count(x), -a.index(x))) for a in answers]
    assert [p["majority_answer"] for p in predictions] == majority
    sampled = summary["sampled"]
    assert sampled["k"] == 4 and list(sampled["pass_at"]) == ["1", "2", "4"]
    assert sampled["mean_at_k"] == pytest.approx(100 * sum(map(sum, correct)) / (4 * len(PROBLEMS)))
    assert sampled["pass_at_k"] == pytest.approx(100 * sum(map(any, correct)) / len(PROBLEMS))
    assert sampled["maj_at_k"] == pytest.approx(100 * sum(m == "0" for m in majority) / len(PROBLEMS))


def test_sampled_evaluation_reproduces_from_its_seed(tiny_model_dir, problems_file, tmp_path):
    common = flags(model=tiny_model_dir, dataset=problems_file, max_new_tokens=4)
    answers = {}
    for name, seed in (("first", 0), ("again", 0), ("other", 1)):
        evaluate.main([*common, *SAMPLED, *flags(seed=seed, output_dir=tmp_path / name)])
        predictions = read_jsonl(tmp_path / name / "predictions-base.jsonl")
        answers[name] = [[s["completion"] for s in p["samples"]] for p in predictions]
    assert answers["first"] == answers["again"]
    assert answers["first"] != answers["other"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--num_samples", "0"], "--num_samples must be a positive integer (answers sampled per problem), got 0"),
        (["--num_samples", "16"], "--num_samples 16 samples its answers: give --temperature > 0"),
        (["--temperature", "-1"], "--temperature must be 0 (greedy) or a positive number, got -1.0"),
        (["--temperature", "0.6", "--top_p", "0"], "--top_p must be in (0, 1] (1 keeps every token), got 0.0"),
        (["--temperature", "0.6", "--top_p", "1.5"], "--top_p must be in (0, 1] (1 keeps every token), got 1.5"),
        (["--top_p", "0.95"], "--top_p 0.95 applies to sampled answers only: give --temperature > 0"),
        (["--temperature", "0.6", "--seed", "-1"], "--seed must be an integer in [0, 2**32 - 1], got -1"),
        (
            ["--temperature", "0.6", "--generation_backend", "continuous"],
            "--generation_backend continuous answers greedily only; use --generation_backend static to sample",
        ),
    ],
)
def test_sampling_usage_errors(capsys, tiny_model_dir, problems_file, tmp_path, argv, expected):
    out = tmp_path / "eval"
    call = partial(evaluate.main, [*flags(model=tiny_model_dir, dataset=problems_file, output_dir=out), *argv])
    assert_usage_error(capsys, call, expected)
    assert not out.exists()
