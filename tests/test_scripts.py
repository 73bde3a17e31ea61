"""Tests for scripts/adapt.py and scripts/evaluate.py: what a run writes, YAML configs, one-line errors, output
folders that appear whole or not at all, and launches through accelerate."""

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PROBLEMS, REPO, write_problems
from safetensors.torch import load_file, save_file

from zerosiam_hf import PREDICTOR_NAME, ModelArguments, load_adapted_model, load_model_and_tokenizer
from zerosiam_hf.checkers import MathChecker
from zerosiam_hf.commands import adapt, evaluate
from zerosiam_hf.guards import NonFiniteGuard
from zerosiam_hf.trainer import ZeroSiamTrainer, latest_checkpoint


def flags(**options) -> list[str]:
    """Command-line flags from keyword arguments: flags(max_steps=1) == ["--max_steps", "1"]."""
    return [item for name, value in options.items() for item in (f"--{name}", str(value))]


def adapt_argv(model_dir: str, dataset: str, output_dir: Path, *extra: str) -> list[str]:
    """A small, fast adapt.py command line on the CPU: six problems, two a step, four new tokens."""
    fast = flags(
        per_device_train_batch_size=2, max_new_tokens=4, report_to="none", disable_tqdm="true", use_cpu="true"
    )
    return [*flags(model=model_dir, dataset=dataset, output_dir=output_dir), *fast, *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def assert_usage_error(capsys, call, expected: str) -> str:
    """`call()` exits with status 2 and prints one line, `error: ...`, that contains `expected`."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err
    return lines[0]


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


# ----------------------------------------------------------------------------------------------------- adapt, evaluate
@pytest.fixture(scope="module")
def adapted_run(tmp_path_factory, tiny_model_dir):
    """One online ZeroSiam run of adapt.py over the six conftest problems."""
    folder = tmp_path_factory.mktemp("adapt")
    dataset = write_problems(folder / "problems.jsonl", [{"question": q, "answer": a} for q, a in PROBLEMS])
    output_dir = folder / "run"
    record = adapt.main(adapt_argv(tiny_model_dir, dataset, output_dir))
    return {"record": record, "output_dir": output_dir, "dataset": dataset, "model_dir": tiny_model_dir}


def test_adapt_writes_adapter_run_record_and_predictions(adapted_run):
    output_dir, dataset = adapted_run["output_dir"], adapted_run["dataset"]
    files = {p.name for p in output_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "run.json", "predictions.jsonl"} <= files
    assert not output_dir.with_name("run.partial").exists() and not output_dir.with_name("run.old").exists()
    assert PREDICTOR_NAME in json.loads((output_dir / "adapter_config.json").read_text())["modules_to_save"]

    run = json.loads((output_dir / "run.json").read_text())
    assert run == json.loads(json.dumps(adapted_run["record"], default=str))  # main() returns what it wrote
    config = run["config"]
    assert config["ModelArguments"]["model"] == adapted_run["model_dir"]
    assert config["DataArguments"]["dataset"] == dataset
    assert config["ZeroSiamConfig"]["method"] == "zerosiam" and config["ZeroSiamConfig"]["max_new_tokens"] == 4
    assert config["ZeroSiamConfig"]["output_dir"] == str(output_dir)  # the folder asked for, not the staging one
    assert run["data"]["sha256"] == hashlib.sha256(Path(dataset).read_bytes()).hexdigest()
    assert run["data"]["path"] == str(Path(dataset).resolve()) and run["data"]["selected"] == len(PROBLEMS)
    for package in ("torch", "transformers", "peft", "accelerate", "datasets"):
        assert run["versions"][package] == version(package)
    assert run["num_processes"] == 1 and run["results"]["steps"] == 3
    # the tiny Llama's two layers, every attention projection, and a head the loss takes as it is
    projections = ("q_proj", "k_proj", "v_proj", "o_proj")
    assert run["lora_modules"] == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in projections]
    assert run["model"]["head_transform"] == {"logit_scale": 1.0, "softcap": None}
    assert run["data"]["prompts_cut"] == 0
    online = run["results"]["online"]
    assert online["n"] == len(PROBLEMS)
    assert 0 <= online["accuracy_strict"] <= 100 and 0 <= online["accuracy_flexible"] <= 100
    steps = [entry for entry in run["log_history"] if "loss" in entry]
    assert len(steps) == 3 and all("loss/entropy" in entry and "loss/align" in entry for entry in steps)

    predictions = read_jsonl(output_dir / "predictions.jsonl")
    assert [p["index"] for p in predictions] == list(range(len(PROBLEMS)))
    assert all({"completion", "correct_strict", "correct_flexible", "updates_before"} <= p.keys() for p in predictions)
    accuracy = 100 * sum(p["correct_flexible"] for p in predictions) / len(predictions)
    assert online["accuracy_flexible"] == pytest.approx(accuracy)


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


def test_yaml_config_with_command_line_override(tiny_model_dir, problems_file, tmp_path):
    config = tmp_path / "tent.yaml"
    config.write_text(
        "# method\nmethod: tent\nlearning_rate: 0.001\n# protocol\nprotocol: offline\nmax_steps: 1\n"
        "per_device_train_batch_size: 3\nlora_target_modules: [q_proj, v_proj]\n"
    )
    output_dir = tmp_path / "run"
    adapt.main(
        adapt_argv(tiny_model_dir, problems_file, output_dir, "--config", str(config), "--learning_rate", "0.002")
    )
    run = json.loads((output_dir / "run.json").read_text())["config"]["ZeroSiamConfig"]
    assert run["learning_rate"] == 0.002  # the flag wins over the file
    assert run["method"] == "tent" and run["protocol"] == "offline" and run["max_steps"] == 1  # the file's values
    assert run["per_device_train_batch_size"] == 2  # the flag of adapt_argv wins over the file's 3
    adapter = json.loads((output_dir / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"] and not adapter["modules_to_save"]
    record = json.loads((output_dir / "run.json").read_text())
    assert record["lora_modules"] == [
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    ]
    assert not (output_dir / "predictions.jsonl").exists()  # offline: nothing answered along the way
    assert json.loads((output_dir / "run.json").read_text())["results"]["online"] is None


# ---------------------------------------------------------------------------------------------------------- bad inputs
BAD_DATA = {
    "no_columns": [{"text": q} for q, _ in PROBLEMS],
    "bad_gold": [{"question": "q", "answer": "#### 3"}, {"question": "q", "answer": "three"}],
    "empty": [],
}


@pytest.mark.parametrize(
    ("data", "argv", "expected"),
    [
        (None, ["--model", "no-such-model"], "unknown --model 'no-such-model': use an alias"),
        ("missing", [], "missing.jsonl: no such file; check the path"),
        ("no_columns", [], "rows lack the column(s) answer, question"),
        ("bad_gold", [], "row 1: gold answer has no '#### <number>' line"),
        ("empty", [], "the file is empty; give a file with problems"),
        (None, ["--learning_rate=-1"], "--learning_rate must be >= 0, got -1"),
        (None, ["--alpha=-0.5"], "--alpha must be >= 0, got -0.5"),
        (None, ["--method", "sgd"], "--method must be one of zerosiam, tent, come, none; got 'sgd'"),
        (None, ["--signal", "logits"], "--signal must be one of response, prompt; got 'logits'"),
        (None, ["--protocol", "batch"], "--protocol must be one of online, offline; got 'batch'"),
        (None, ["--max_new_tokens", "0"], "--max_new_tokens must be a positive integer, got 0"),
        (None, ["--learning_rate", "fast"], "invalid float value: 'fast'"),
        (None, ["--alpha", "nan"], "--alpha must be a finite number, got nan"),
        (None, ["--learning_rate", "inf"], "--learning_rate must be a finite number, got inf"),
        (None, ["--predictor_lr_scale=-inf"], "--predictor_lr_scale must be a finite number, got -inf"),
        (None, ["--lora_dropout", "1.5"], "--lora_dropout must be in [0, 1), got 1.5"),
        (None, ["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be a positive integer"),
    ],
)
def test_adapt_bad_inputs_exit_2_with_one_line(
    capsys, monkeypatch, tiny_model_dir, problems_file, tmp_path, data, argv, expected
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(adapt, "load_model_and_tokenizer", no_model)
    dataset = problems_file
    if data == "missing":
        dataset = str(tmp_path / "missing.jsonl")
    elif data is not None:
        dataset = write_problems(tmp_path / "problems.jsonl", BAD_DATA[data])
    output_dir = tmp_path / "run"
    assert_usage_error(capsys, partial(adapt.main, adapt_argv(tiny_model_dir, dataset, output_dir, *argv)), expected)
    assert not output_dir.exists() and not output_dir.with_name("run.partial").exists()


def test_unknown_model_is_reported_before_the_data_loads(capsys, monkeypatch, problems_file, tmp_path):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the unknown model was reported")

    monkeypatch.setattr(adapt, "load_problems", no_data)
    call = partial(adapt.main, adapt_argv("no-such-model", problems_file, tmp_path / "run"))
    assert_usage_error(capsys, call, "unknown --model 'no-such-model': use an alias")


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("lora_r: [4]\n", "lora_r takes one value, got [4]"),
        ("lora_r: 4.5\n", "lora_r: invalid value 4.5; see --help"),
        ("learning_rate: [0.1]\n", "learning_rate takes one value, got [0.1]"),
        ("max_new_tokens: many\n", "max_new_tokens: invalid value 'many'; see --help"),
    ],
)
def test_yaml_values_of_the_wrong_type(capsys, tiny_model_dir, problems_file, tmp_path, yaml_text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    call = partial(adapt.main, adapt_argv(tiny_model_dir, problems_file, tmp_path / "run", "--config", str(config)))
    assert_usage_error(capsys, call, f"--config {config}: {expected}")


def test_unknown_yaml_key(capsys, tiny_model_dir, problems_file, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(yaml.safe_dump({"method": "tent", "learnig_rate": 0.1}))
    call = partial(adapt.main, adapt_argv(tiny_model_dir, problems_file, tmp_path / "run", "--config", str(config)))
    assert_usage_error(capsys, call, "unknown option(s) learnig_rate; see --help")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--learning_rate=-1"], "error: --learning_rate must be >= 0, got -1.0."),
        (["--model", "no-such-model"], "error: unknown --model 'no-such-model'"),
    ],
)
def test_adapt_command_line_prints_one_line_and_exits_2(tiny_model_dir, problems_file, tmp_path, argv, expected):
    script = [sys.executable, str(REPO / "scripts" / "adapt.py")]
    argv = adapt_argv(tiny_model_dir, problems_file, tmp_path / "run", *argv)
    result = subprocess.run(
        [*script, *argv], capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=300
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(expected), result.stderr
    assert result.stderr.rstrip().endswith(errors[0])  # the last thing the user sees


@pytest.mark.parametrize("script", ["adapt.py", "evaluate.py"])
def test_unknown_model_is_the_only_line_on_stderr(script, tmp_path):
    """Nothing comes before the error: no data log, no progress bar, no bitsandbytes notice when it is installed."""
    argv = [sys.executable, str(REPO / "scripts" / script), "--model", "no-such-model", "--output_dir", str(tmp_path)]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=300)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: unknown --model 'no-such-model': use an alias")


# ------------------------------------------------------------------------------------------------------ output folders
def test_output_dir_guard(capsys, tiny_model_dir, problems_file, tmp_path):
    output_dir = tmp_path / "run"
    argv = adapt_argv(tiny_model_dir, problems_file, output_dir, "--protocol", "offline", "--max_steps", "1")
    adapt.main(argv)
    adapt.main(argv)  # the same run again is allowed and replaces the first
    assert not output_dir.with_name("run.partial").exists() and not output_dir.with_name("run.old").exists()
    first = snapshot(output_dir)

    different = argv + ["--method", "tent"]
    assert_usage_error(capsys, partial(adapt.main, different), "already holds a different run")
    assert snapshot(output_dir) == first

    adapt.main(different + ["--overwrite", "true"])
    assert json.loads((output_dir / "run.json").read_text())["config"]["ZeroSiamConfig"]["method"] == "tent"
    assert PREDICTOR_NAME not in (output_dir / "adapter_config.json").read_text()

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    call = partial(adapt.main, adapt_argv(tiny_model_dir, problems_file, stranger))
    assert_usage_error(capsys, call, "is not empty and holds no run.json")
    assert (stranger / "notes.txt").read_text() == "keep me"


def test_interrupted_run_leaves_no_half_written_output(capsys, tiny_model_dir, problems_file, tmp_path, monkeypatch):
    output_dir = tmp_path / "run"
    argv = adapt_argv(tiny_model_dir, problems_file, output_dir)
    adapt.main(argv)
    previous = snapshot(output_dir)

    steps = []
    training_step = ZeroSiamTrainer.training_step

    def interrupted_step(self, *args, **kwargs):
        steps.append(self.state.global_step)
        if len(steps) == 2:  # after one update
            raise KeyboardInterrupt
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(ZeroSiamTrainer, "training_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        adapt.main(argv + ["--method", "tent", "--overwrite", "true"])
    assert steps == [0, 1]
    assert snapshot(output_dir) == previous  # the previous run, intact

    fresh = tmp_path / "fresh"
    steps.clear()
    with pytest.raises(KeyboardInterrupt):
        adapt.main(adapt_argv(tiny_model_dir, problems_file, fresh))
    assert not fresh.exists()  # no half-written folder under the name asked for
    assert len(read_jsonl(tmp_path / "fresh.partial" / "predictions.jsonl")) == 2  # the first batch's answers

    monkeypatch.undo()
    rerun = partial(adapt.main, adapt_argv(tiny_model_dir, problems_file, fresh))
    assert_usage_error(capsys, rerun, "fresh.partial holds an interrupted run; it has no checkpoint to resume from")
    adapt.main(adapt_argv(tiny_model_dir, problems_file, fresh, "--overwrite", "true"))  # starting over drops it
    assert (fresh / "run.json").is_file() and not fresh.with_name("fresh.partial").exists()


# ---------------------------------------------------------------------------------------------------------- accelerate
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(launch_args: list[str], script_args: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch <launch_args> scripts/adapt.py <script_args>`, which must succeed."""
    accelerate = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch"]  # the `accelerate` command
    launch = [*launch_args, *flags(num_machines=1, mixed_precision="no", dynamo_backend="no")]
    command = [*accelerate, *launch, str(REPO / "scripts" / "adapt.py"), *script_args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_accelerate_launch_one_cpu_process(tiny_model_dir, problems_file, tmp_path):
    output_dir = tmp_path / "run"
    accelerate_launch(["--cpu", "--num_processes", "1"], adapt_argv(tiny_model_dir, problems_file, output_dir))
    run = json.loads((output_dir / "run.json").read_text())
    assert run["num_processes"] == 1 and run["results"]["online"]["n"] == len(PROBLEMS)
    assert [p["index"] for p in read_jsonl(output_dir / "predictions.jsonl")] == list(range(len(PROBLEMS)))
    assert (output_dir / "adapter_model.safetensors").is_file()


def test_accelerate_launch_two_cpu_processes_gathers_predictions(tiny_model_dir, problems_file, tmp_path):
    # `accelerate launch --cpu --num_processes 2` starts a single process (accelerate runs several CPU processes
    # only through mpirun); the torchrun-style launcher with --use_cpu starts two, which talk over gloo.
    output_dir = tmp_path / "run"
    accelerate_launch(
        ["--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port())],
        adapt_argv(tiny_model_dir, problems_file, output_dir),
    )
    run = json.loads((output_dir / "run.json").read_text())
    assert run["num_processes"] == 2
    assert run["results"]["steps"] == 2  # six problems, two per process and step
    assert run["results"]["online"]["n"] == len(PROBLEMS)
    predictions = read_jsonl(output_dir / "predictions.jsonl")
    assert sorted(p["index"] for p in predictions) == list(range(len(PROBLEMS)))  # each problem exactly once
    assert (output_dir / "adapter_model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------- what a run may delete
def test_partial_and_old_folders_a_user_made_are_never_deleted(capsys, tiny_model_dir, problems_file, tmp_path):
    output_dir = tmp_path / "run"
    argv = adapt_argv(tiny_model_dir, problems_file, output_dir, *flags(protocol="offline", max_steps=1))
    partial_dir = tmp_path / "run.partial"
    partial_dir.mkdir()
    (partial_dir / "notes.txt").write_text("keep me")
    assert_usage_error(capsys, partial(adapt.main, argv), f"{partial_dir} was not made by zerosiam-hf")
    assert (partial_dir / "notes.txt").read_text() == "keep me" and not output_dir.exists()
    (partial_dir / "notes.txt").unlink()  # an empty folder holds nothing to lose: the run may use it

    adapt.main(argv)
    first = snapshot(output_dir)
    old = tmp_path / "run.old"
    old.mkdir()
    (old / "notes.txt").write_text("keep me")
    assert_usage_error(capsys, partial(adapt.main, argv), f"{old} was not made by zerosiam-hf")
    assert (old / "notes.txt").read_text() == "keep me" and snapshot(output_dir) == first


def test_overwrite_refuses_a_folder_of_user_files(capsys, tiny_model_dir, problems_file, tmp_path):
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    argv = adapt_argv(
        tiny_model_dir, problems_file, stranger, *flags(overwrite="true", protocol="offline", max_steps=1)
    )
    assert_usage_error(capsys, partial(adapt.main, argv), f"{stranger} was not made by zerosiam-hf")
    assert snapshot(stranger) == {"notes.txt": b"keep me"}
    assert not stranger.with_name("stranger.partial").exists()


def test_a_run_that_fails_after_staging_leaves_no_partial_folder(capsys, tiny_model_dir, problems_file, tmp_path):
    output_dir = tmp_path / "run"
    argv = adapt_argv(tiny_model_dir, problems_file, output_dir, "--lora_target_modules", "no_such_module")
    assert_usage_error(capsys, partial(adapt.main, argv), "no_such_module match no linear layer of LlamaForCausalLM")
    assert not output_dir.exists() and not output_dir.with_name("run.partial").exists()


def test_prompts_cut_from_the_left_are_counted_in_the_log_and_run_record(tiny_model_dir, tmp_path, caplog):
    rows = [{"question": q, "answer": a} for q, a in PROBLEMS]
    rows[3]["question"] = "Read this. " * 100
    dataset = write_problems(tmp_path / "long.jsonl", rows)
    output_dir = tmp_path / "run"
    with caplog.at_level("WARNING", logger="zerosiam_hf"):
        adapt.main(adapt_argv(tiny_model_dir, dataset, output_dir, *flags(max_prompt_length=400, max_steps=1)))
    assert "1 of 6 prompts are longer than 400 tokens and were cut from the left" in caplog.text
    assert json.loads((output_dir / "run.json").read_text())["data"]["prompts_cut"] == 1


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
    elif how == "nan":
        name = sorted(name for name in tensors if "lora_B" in name)[0]
        save_file({**tensors, name: torch.full_like(tensors[name], float("nan"))}, weights)
    return target


BAD_ADAPTERS = {
    "truncated": "adapter_model.safetensors cannot be read (Error while deserializing header",
    "tent_weights": "its weights do not fit its adapter_config.json or this model (KeyError",
    "rank": "its weights do not fit its adapter_config.json or this model (RuntimeError: size mismatch for",
    "nan": "1 of 17 tensors hold NaN or Inf",
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


# -------------------------------------------------------------------------------------------------------- divergence
DIVERGING = flags(learning_rate=10, protocol="offline", signal="prompt", max_steps=12)


def assert_stopped(capsys, call, expected: str) -> str:
    """`call()` exits with status 1 and one line, `error: ...`, that contains `expected`."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        call()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 1 and len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def test_a_diverging_run_stops_with_one_line_and_publishes_nothing(capsys, tiny_model_dir, problems_file, tmp_path):
    output_dir = tmp_path / "run"
    call = partial(adapt.main, adapt_argv(tiny_model_dir, problems_file, output_dir, *DIVERGING))
    assert_stopped(capsys, call, "the last 5 updates had a NaN or Inf loss or gradient and were skipped")
    assert not output_dir.exists()


def test_an_adapter_with_nonfinite_weights_is_never_published(
    capsys, monkeypatch, tiny_model_dir, problems_file, tmp_path
):
    monkeypatch.setattr(NonFiniteGuard, "on_pre_optimizer_step", lambda *args, **kwargs: None)  # no guard
    output_dir = tmp_path / "run"
    call = partial(adapt.main, adapt_argv(tiny_model_dir, problems_file, output_dir, *DIVERGING))
    assert_stopped(capsys, call, "the adapter holds NaN or Inf in ")
    assert not output_dir.exists()
    staging = tmp_path / "run.partial"
    assert (staging / "run.json").is_file()  # the records of the run are kept
    assert not (staging / ".lock").exists()


# ----------------------------------------------------------------------------------------------- one writer per folder
def start_adapt(argv: list[str]) -> subprocess.Popen:
    """scripts/adapt.py in its own process."""
    command = [sys.executable, str(REPO / "scripts" / "adapt.py"), *argv]
    return subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_a_second_run_into_a_folder_being_written_refuses(capsys, tiny_model_dir, problems_file, tmp_path):
    output_dir = tmp_path / "run"
    argv = adapt_argv(tiny_model_dir, problems_file, output_dir, *flags(max_new_tokens=48))
    first = start_adapt(argv)
    try:
        wait_for(tmp_path / "run.partial" / ".lock", first)
        line = assert_usage_error(capsys, partial(adapt.main, argv), f"--output_dir {output_dir}: another run (pid ")
        assert f"(pid {first.pid} on {socket.gethostname()}) is writing it" in line
        assert first.poll() is None  # the refusal came while the first run was still writing
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()[-3000:]
    assert len(read_jsonl(output_dir / "predictions.jsonl")) == len(PROBLEMS)  # the first run, whole
    assert not (output_dir / ".lock").exists()


# ------------------------------------------------------------------------------------------------- stop, kill, resume
RESUMABLE = flags(per_device_train_batch_size=1, max_new_tokens=16, save_steps=2)  # 12 steps, a checkpoint every 2


@pytest.fixture(scope="module")
def twelve_problems(tmp_path_factory) -> str:
    rows = [{"question": f"{q} (part {part})", "answer": a} for part in (1, 2) for q, a in PROBLEMS]
    return write_problems(tmp_path_factory.mktemp("twelve") / "problems.jsonl", rows)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, twelve_problems):
    """The runs, one per protocol, that the interrupted ones must end up equal to."""
    runs = {}

    def run(protocol: str) -> Path:
        if protocol not in runs:
            runs[protocol] = tmp_path_factory.mktemp(f"uninterrupted-{protocol}") / "run"
            argv = [*adapt_argv(tiny_model_dir, twelve_problems, runs[protocol]), *RESUMABLE, "--protocol", protocol]
            adapt.main(argv)
        return runs[protocol]

    return run


def assert_same_run(output_dir: Path, reference: Path) -> None:
    if (reference / "predictions.jsonl").exists():  # online: every answer, in the same words
        assert (output_dir / "predictions.jsonl").read_bytes() == (reference / "predictions.jsonl").read_bytes()
    weights, expected = (load_file(folder / "adapter_model.safetensors") for folder in (output_dir, reference))
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in expected)
    run, expected_run = (json.loads((folder / "run.json").read_text()) for folder in (output_dir, reference))
    assert run["results"]["online"] == expected_run["results"]["online"]
    assert run["results"]["steps"] == 12
    assert not any(output_dir.glob("checkpoint-*")) and not output_dir.with_name("run.partial").exists()


def resume_and_count_steps(monkeypatch, argv: list[str], expected_steps: int) -> None:
    """Run adapt.py in this process and check that it answered only the batches after the checkpoint."""
    calls = []
    generate = ZeroSiamTrainer._generate
    monkeypatch.setattr(ZeroSiamTrainer, "_generate", lambda self, *a, **k: calls.append(1) or generate(self, *a, **k))
    adapt.main(argv)
    monkeypatch.undo()
    assert len(calls) == expected_steps


def test_a_killed_run_resumes_to_the_same_end(
    capsys, monkeypatch, tiny_model_dir, twelve_problems, uninterrupted, tmp_path
):
    output_dir = tmp_path / "run"
    argv = [*adapt_argv(tiny_model_dir, twelve_problems, output_dir), *RESUMABLE]
    process = start_adapt(argv)
    staging = tmp_path / "run.partial"
    wait_for(staging / "checkpoint-4" / "trainer_state.json", process)
    process.kill()
    process.wait()
    streamed = read_jsonl(staging / "predictions.jsonl")  # a readable record of the answers given before the kill
    assert len(streamed) >= 4 and len({p["index"] for p in streamed}) == len(streamed)

    line = assert_usage_error(capsys, partial(adapt.main, argv), f"{staging} holds an interrupted run (its process")
    assert "resume it with --resume_from_checkpoint true or start over with --overwrite true" in line
    other = [*argv, "--learning_rate", "1e-3", "--resume_from_checkpoint", "true"]
    assert_usage_error(capsys, partial(adapt.main, other), "was started with other settings (--learning_rate)")

    checkpoint = Path(latest_checkpoint(staging))
    resume_and_count_steps(monkeypatch, [*argv, "--resume_from_checkpoint", "true"], 12 - int(checkpoint.name[11:]))
    assert_same_run(output_dir, uninterrupted("online"))


@pytest.mark.parametrize(("signum", "protocol"), [(signal.SIGTERM, "online"), (signal.SIGINT, "offline")])
def test_a_signal_stops_with_a_checkpoint_and_one_line_then_resumes(
    monkeypatch, tiny_model_dir, twelve_problems, uninterrupted, tmp_path, signum, protocol
):
    output_dir = tmp_path / "run"
    argv = [*adapt_argv(tiny_model_dir, twelve_problems, output_dir), *RESUMABLE, "--protocol", protocol]
    process = start_adapt(argv)
    staging = tmp_path / "run.partial"
    wait_for(staging / "checkpoint-2" / "trainer_state.json", process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=300)
    err = err.decode()
    assert process.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err
    line = err.rstrip().splitlines()[-1]
    pattern = rf"error: stopped by {signum.name} at step (\d+) of 12; checkpoint in (\S+); resume with: (.+)"
    match = re.fullmatch(pattern, line)
    assert match, line
    step = int(match[1])
    assert Path(match[2]) == staging / f"checkpoint-{step}" and (Path(match[2]) / "trainer_state.json").is_file()
    if protocol == "online":
        assert len(read_jsonl(staging / "predictions.jsonl")) == step
    assert shlex.split(match[3])[2:] == [*argv, "--resume_from_checkpoint", "true"]

    # the checkpoint named by path, as the Trainer's own flag takes it
    resume_and_count_steps(monkeypatch, [*argv, "--resume_from_checkpoint", match[2]], 12 - step)
    assert_same_run(output_dir, uninterrupted(protocol))
