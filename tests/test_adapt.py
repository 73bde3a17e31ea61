"""Tests for the adapt command: what a run writes, YAML configs, one-line errors for bad inputs, output folders that
appear whole or not at all, and runs that diverge."""

import errno
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from functools import partial
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from helpers import (
    PROBLEMS,
    REPO,
    adapt_argv,
    assert_usage_error,
    flags,
    read_jsonl,
    snapshot,
    subprocess_env,
    write_problems,
)

from zerosiam_hf import PREDICTOR_NAME, modeling, pipeline
from zerosiam_hf.commands import adapt, evaluate
from zerosiam_hf.guards import NonFiniteGuard
from zerosiam_hf.staging import close_staging, open_staging, publish
from zerosiam_hf.trainer import ZeroSiamTrainer


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


def test_the_evaluate_hint_quotes_a_path_with_spaces(capsys, tiny_model_dir, problems_file, tmp_path):
    output_dir = tmp_path / "my runs" / "tent 1"
    adapt.main(adapt_argv(tiny_model_dir, problems_file, output_dir, *flags(protocol="offline", max_steps=1)))
    hint = shlex.split(capsys.readouterr().out.split("evaluate the adapter with: ")[1].splitlines()[0])
    assert hint[hint.index("--adapter") + 1] == str(output_dir)
    assert hint[hint.index("--model") + 1] == tiny_model_dir


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
        ("bad_gold", [], "line 2: gold answer has no '#### <number>' line"),
        ("empty", [], "the file is empty; give a file with problems"),
        (None, ["--learning_rate=-1"], "--learning_rate must be >= 0, got -1"),
        (None, ["--alpha=-0.5"], "--alpha must be >= 0, got -0.5"),
        (None, ["--method", "sgd"], "argument --method: invalid choice: 'sgd' (choose from 'none', 'tent',"),
        (None, ["--signal", "logits"], "argument --signal: invalid choice: 'logits' (choose from 'response',"),
        (None, ["--protocol", "batch"], "argument --protocol: invalid choice: 'batch' (choose from 'online',"),
        (None, ["--method", "tent", "--alpha", "2"], "--alpha is not an option of --method tent (its own options:"),
        (None, ["--num_generations", "4"], "--num_generations is not an option of --method zerosiam"),
        (None, ["--method", "em_ft", "--signal", "prompt"], "--method em_ft takes --signal response; got --signal"),
        (None, ["--max_new_tokens", "0"], "--max_new_tokens must be a positive integer, got 0"),
        (None, ["--learning_rate", "fast"], "invalid float value: 'fast'"),
        (None, ["--alpha", "nan"], "--alpha must be a finite number, got nan"),
        (None, ["--learning_rate", "inf"], "--learning_rate must be a finite number, got inf"),
        (None, ["--predictor_lr_scale=-inf"], "--predictor_lr_scale must be a finite number, got -inf"),
        (None, ["--lora_dropout", "1.5"], "--lora_dropout must be in [0, 1), got 1.5"),
        (None, ["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be a positive integer"),
        # TrainingArguments' own options: reported before the model loads, not as a ZeroDivisionError or at publish.
        (None, ["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be a positive integer"),
        (None, ["--save_steps", "0"], "--save_steps must be a finite number > 0"),
        (None, ["--save_steps=-1"], "--save_steps must be a finite number > 0"),
        (None, ["--max_steps=-5"], "--max_steps must be a positive integer, or -1"),
        (None, ["--max_steps", "0"], "--max_steps must be a positive integer, or -1"),
        (None, ["--weight_decay", "nan"], "--weight_decay must be a finite number >= 0, got nan"),
        (None, ["--adam_epsilon", "0"], "--adam_epsilon must be a finite number > 0, got 0"),
        (None, ["--adam_beta2", "1"], "--adam_beta2 must be in [0, 1), got 1"),
        (None, ["--warmup_steps", "inf"], "--warmup_steps must be a finite number >= 0"),
        (None, ["--max_grad_norm", "nan"], "--max_grad_norm must be a finite number >= 0"),
        (None, ["--num_train_epochs", "0"], "--num_train_epochs must be a finite number > 0"),
    ],
)
def test_adapt_bad_inputs_exit_2_with_one_line(
    capsys, monkeypatch, tiny_model_dir, problems_file, tmp_path, data, argv, expected
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(pipeline, "load_model_and_tokenizer", no_model)
    dataset = problems_file
    if data == "missing":
        dataset = str(tmp_path / "missing.jsonl")
    elif data is not None:
        dataset = write_problems(tmp_path / "problems.jsonl", BAD_DATA[data])
    output_dir = tmp_path / "run"
    assert_usage_error(capsys, partial(adapt.main, adapt_argv(tiny_model_dir, dataset, output_dir, *argv)), expected)
    assert not output_dir.exists() and not output_dir.with_name("run.partial").exists()


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        (
            flags(max_prompt_length=5000),
            "holds 1024 positions, but --max_prompt_length 5000 + --max_new_tokens 4 = 5004 do not fit; lower "
            "--max_prompt_length to 1020 (longer prompts are cut from the left).",
        ),
        (
            flags(max_new_tokens=2000),
            "holds 1024 positions, but --max_prompt_length 512 + --max_new_tokens 2000 = 2512 do not fit; lower "
            "--max_new_tokens to 512.",
        ),
    ],
)
def test_lengths_past_the_models_context_are_refused_before_it_loads(
    capsys, monkeypatch, tiny_model_dir, problems_file, tmp_path, lengths, expected
):
    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before the lengths were checked")

    monkeypatch.setattr(modeling.AutoModelForCausalLM, "from_pretrained", no_weights)
    output_dir = tmp_path / "run"
    call = partial(adapt.main, adapt_argv(tiny_model_dir, problems_file, output_dir, *lengths))
    assert_usage_error(capsys, call, f"error: --model {tiny_model_dir} {expected}")
    assert not output_dir.exists() and not output_dir.with_name("run.partial").exists()
    argv = flags(model=tiny_model_dir, dataset=problems_file, output_dir=tmp_path / "eval", max_new_tokens=4)
    assert_usage_error(
        capsys, partial(evaluate.main, [*argv, *lengths]), f"error: --model {tiny_model_dir} {expected}"
    )


def test_unknown_model_is_reported_before_the_data_loads(capsys, monkeypatch, problems_file, tmp_path):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the unknown model was reported")

    monkeypatch.setattr(pipeline, "load_scored_problems", no_data)
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
    assert_usage_error(capsys, call, f"--output_dir {stranger} was not made by zerosiam-hf (it holds no .zerosiam-hf)")
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


def test_files_a_user_adds_to_an_output_folder_are_never_deleted(capsys, tiny_model_dir, problems_file, tmp_path):
    output_dir = tmp_path / "u3"
    argv = adapt_argv(tiny_model_dir, problems_file, output_dir, *flags(protocol="offline", max_steps=1))
    adapt.main(argv)
    written = json.loads((output_dir / ".zerosiam-hf").read_text())["files"]
    assert {"run.json", "adapter_model.safetensors", ".zerosiam-hf"} <= set(written) and ".lock" not in written
    (output_dir / "notes.txt").write_text("keep me")
    (output_dir / "myeval").mkdir()
    (output_dir / "myeval" / "scores.csv").write_text("1,2")
    expected = f"--output_dir {output_dir} holds myeval/, notes.txt, which no run wrote there; a run never deletes"
    for extra in ([], ["--method", "tent", "--overwrite", "true"]):  # a same-settings rerun, and a replacement
        assert_usage_error(capsys, partial(adapt.main, argv + extra), expected)
        assert (output_dir / "notes.txt").read_text() == "keep me" and (output_dir / "myeval" / "scores.csv").exists()
        assert not output_dir.with_name("u3.partial").exists()
    shutil.move(output_dir / "notes.txt", tmp_path / "notes.txt")
    shutil.move(output_dir / "myeval", tmp_path / "myeval")
    adapt.main(argv + ["--method", "tent", "--overwrite", "true"])  # nothing of the user's left in it: replaced
    assert json.loads((output_dir / "run.json").read_text())["config"]["ZeroSiamConfig"]["method"] == "tent"

    # A folder with a run record that no run of this project wrote (no marker), beside a user's data: both are theirs.
    foreign = tmp_path / "u5"
    foreign.mkdir()
    (foreign / "run.json").write_text("{}")
    (foreign / "data.csv").write_text("a,b")
    call = partial(adapt.main, adapt_argv(tiny_model_dir, problems_file, foreign, *flags(overwrite="true")))
    held = "was not made by zerosiam-hf (it holds no .zerosiam-hf) and holds data.csv, run.json;"
    assert_usage_error(capsys, call, f"--output_dir {foreign} {held}")
    assert snapshot(foreign) == {"data.csv": b"a,b", "run.json": b"{}"}


def test_a_file_added_while_a_run_goes_on_stays_in_the_replaced_folder(tmp_path, caplog):
    target = str(tmp_path / "out")
    for round in range(2):
        staging = open_staging(target)
        (staging / "run.json").write_text(json.dumps({"round": round}))
        if round == 1:  # added after check_output_dir looked, before the new run is published
            (tmp_path / "out" / "late.txt").write_text("keep me")
        with caplog.at_level("WARNING", logger="zerosiam_hf"):
            publish(staging, target)
        close_staging(staging)
    assert json.loads((tmp_path / "out" / "run.json").read_text()) == {"round": 1}
    assert snapshot(tmp_path / "out.old") == {"late.txt": b"keep me"}  # the old run's files went, the user's stayed
    assert f"kept late.txt in {tmp_path / 'out.old'}: no run wrote them" in caplog.text
    with pytest.raises(ValueError, match="out.old was not made by zerosiam-hf"):  # never deleted by a later run
        open_staging(target)


# ------------------------------------------------------------------------------------ file systems that refuse a write
@pytest.fixture
def small_disk(tmp_path):
    """A folder on its own tmpfs; `mount(options)` (re)mounts it, e.g. "size=40k" (full at once) or "ro"."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = []

    def mount(options: str) -> Path:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
            mounted.clear()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield mount
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_one_line_leaves_nothing_and_the_same_command_then_works(
    capsys, small_disk, tiny_model_dir, problems_file
):
    output_dir = small_disk("size=40k") / "u"
    argv = adapt_argv(tiny_model_dir, problems_file, output_dir, *flags(save_steps=1))
    for _ in range(2):  # each try leaves the disk as it found it: no staging folder, no temporary one
        line = assert_stopped(capsys, partial(adapt.main, argv), f"--output_dir {output_dir}: the run stopped, ")
        assert "(No space left on device); free space on that disk or choose another --output_dir" in line
        assert line.endswith("nothing of this run was kept: then run the same command again.")
        assert list(output_dir.parent.iterdir()) == []
    small_disk("size=4m")  # space freed
    adapt.main(argv)
    assert (output_dir / "run.json").is_file() and list(output_dir.parent.iterdir()) == [output_dir]


def test_a_checkpoint_cut_short_by_a_full_disk_leaves_the_last_complete_one_to_resume(
    capsys, monkeypatch, tiny_model_dir, problems_file, tmp_path
):
    saves = []
    save_rng_state = ZeroSiamTrainer._save_rng_state

    def disk_full_at_the_second_checkpoint(self, output_dir):
        saves.append(output_dir)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir) / "rng_state.pth"))
        save_rng_state(self, output_dir)

    monkeypatch.setattr(ZeroSiamTrainer, "_save_rng_state", disk_full_at_the_second_checkpoint)
    output_dir = tmp_path / "run"
    staging = tmp_path / "run.partial"
    argv = adapt_argv(tiny_model_dir, problems_file, output_dir, *flags(save_steps=1))
    line = assert_stopped(capsys, partial(adapt.main, argv), "(No space left on device); free space on that disk")
    assert Path(saves[1]).parent == staging / ".tmp-checkpoint-2"  # written under a temporary name
    assert line.endswith(
        f"{staging / 'checkpoint-1'} is kept: then run the same command with --resume_from_checkpoint true."
    )
    assert sorted(p.name for p in staging.glob("*checkpoint*")) == ["checkpoint-1"]  # no half-written one
    monkeypatch.undo()
    # The advice holds: a plain rerun points at the resume, and the resume finishes the run.
    assert_usage_error(capsys, partial(adapt.main, argv), "resume it with --resume_from_checkpoint true")
    record = adapt.main(argv + ["--resume_from_checkpoint", "true"])
    assert record["results"]["steps"] == 3 and not staging.exists()
    assert len(read_jsonl(output_dir / "predictions.jsonl")) == len(PROBLEMS)


@pytest.mark.parametrize("where", ["read_only", "through_a_file"])
def test_an_output_dir_that_cannot_be_written_is_one_line_before_the_model_loads(
    capsys, monkeypatch, small_disk, tiny_model_dir, problems_file, tmp_path, where
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was found unwritable")

    monkeypatch.setattr(pipeline, "load_model_and_tokenizer", no_model)
    if where == "read_only":
        parent = small_disk("ro")
        expected = f"cannot write {parent} (Read-only file system); choose an --output_dir on a file system you can"
    else:
        parent = tmp_path / "afile"
        parent.write_text("a file")
        expected = f"cannot write {parent} (File exists); a part of that path is a file, not a folder; choose another"
    output_dir = parent / "sub"
    line = assert_usage_error(
        capsys, partial(adapt.main, adapt_argv(tiny_model_dir, problems_file, output_dir)), expected
    )
    assert line.startswith(f"error: --output_dir {output_dir}: ")
    assert parent.read_text() == "a file" if where == "through_a_file" else list(parent.iterdir()) == []


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


# -------------------------------------------------------------------------------------------------------- divergence
# float32: where the CPU computes in bf16 (--dtype auto), the same steps saturate rather than overflow
DIVERGING = flags(learning_rate=10, protocol="offline", signal="prompt", max_steps=12, dtype="float32")


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
