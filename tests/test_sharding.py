"""Sharded training on two CPU processes (transformers' FSDP2 through --fsdp_size, DeepSpeed ZeRO through an accelerate
config), and launches whose processes are not one run, refused before anything is loaded or written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    PROBLEMS,
    REPO,
    adapt_argv,
    flags,
    greedy,
    make_model,
    make_tokenizer,
    read_jsonl,
    reload_in_fresh_process,
    subprocess_env,
    write_problems,
)
from safetensors.torch import load_file
from test_accelerate import free_port

from zerosiam_hf.commands import adapt
from zerosiam_hf.config import ZeroSiamConfig
from zerosiam_hf.data import DataArguments, build_prompts, load_problems
from zerosiam_hf.engines import installed
from zerosiam_hf.launch import check_one_run, has_accelerator


DRIVER = str(REPO / "tests" / "sharded_adapt.py")  # adapt.py, plus a report from inside each process
ACCELERATE = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
# Two processes of two prompts against one process of four: the same global batch, two updates over eight problems;
# in float32, whose sums in another order the tolerance below allows (--dtype auto is bf16 on some CPUs)
SHARDED = flags(per_device_train_batch_size=2, max_new_tokens=4, dtype="float32")
ONE_PROCESS = flags(per_device_train_batch_size=4, max_new_tokens=4, dtype="float32")
# float32 sums of the same terms in another order (two halves of a batch averaged across processes)
ATOL = 1e-6


def launch(command: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env={**subprocess_env(), **(env or {})}, timeout=300
    )


@pytest.fixture(scope="module")
def eight_problems(tmp_path_factory) -> str:
    rows = [{"question": q, "answer": a} for q, a in PROBLEMS]
    rows += [{"question": f"{q} (again)", "answer": a} for q, a in PROBLEMS[:2]]
    return write_problems(tmp_path_factory.mktemp("eight") / "problems.jsonl", rows)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, tiny_model_dir, eight_problems) -> Path:
    """The reference: one plain process answering and updating on the same global batches."""
    output_dir = tmp_path_factory.mktemp("one-process") / "run"
    adapt.main([*adapt_argv(tiny_model_dir, eight_problems, output_dir), *ONE_PROCESS])
    return output_dir


def reports(prefix: Path) -> list[dict]:
    return [json.loads(Path(f"{prefix}.rank{rank}.json").read_text()) for rank in (0, 1)]


def assert_same_as_one_process(output_dir: Path, reference: Path) -> None:
    """Each problem answered once, with the reference's tokens; the saved adapter equal to the reference's."""
    predictions, expected = read_jsonl(output_dir / "predictions.jsonl"), read_jsonl(reference / "predictions.jsonl")
    assert [p["index"] for p in predictions] == list(range(len(expected)))
    assert [p["completion"] for p in predictions] == [p["completion"] for p in expected]
    weights, reference_weights = (
        load_file(folder / "adapter_model.safetensors") for folder in (output_dir, reference)
    )
    assert weights.keys() == reference_weights.keys()
    assert any("zerosiam_predictor" in name for name in weights)
    for name, tensor in reference_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=ATOL, msg=name)
    assert json.loads((output_dir / "run.json").read_text())["results"]["steps"] == 2


def assert_ranks_agree(ranks: list[dict], sharded: bool) -> None:
    """Both processes hold the same LoRA and predictor; with `sharded`, each holds a part of the base weights."""
    assert [r["processes"] for r in ranks] == [2, 2] and all(r["is_sharded"] == sharded for r in ranks)
    first, second = (r["trainable"] for r in ranks)
    assert first.keys() == second.keys() and any("zerosiam_predictor" in name for name in first)
    assert all(first[name] == second[name] for name in first)
    full = ranks[0]["base_elements_full"]
    if sharded:  # about half each (FSDP2 pads uneven dimensions); together, the whole
        assert all(r["base_elements_held"] < 0.6 * full for r in ranks), ranks
        assert sum(r["base_elements_held"] for r in ranks) >= full
    else:
        assert all(r["base_elements_held"] == full for r in ranks)


# ------------------------------------------------------------------------------------------------ not one run, refused
@pytest.mark.slow
@pytest.mark.skipif(has_accelerator(), reason="accelerate drops FSDP only where there is no GPU")
def test_accelerate_fsdp_on_a_cpu_is_refused_before_anything_is_written(tiny_model_dir, problems_file, tmp_path):
    # The launch a user tries first: two processes that each set up a one-process run of their own.
    output_dir = tmp_path / "run"
    launcher = [*ACCELERATE, "--use_fsdp", "--fsdp_version", "2", "--num_processes", "2"]
    launcher += [*flags(num_machines=1, mixed_precision="no", dynamo_backend="no", main_process_port=free_port())]
    argv = flags(model=tiny_model_dir, dataset=problems_file, output_dir=output_dir, report_to="none")
    result = launch([*launcher, str(REPO / "scripts" / "adapt.py"), *argv])
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]  # every process stops; the one numbered 0 says why
    assert "started 2 processes that do not form one run: accelerate runs FSDP only on GPUs" in errors[0]
    assert "Run: torchrun --nproc_per_node 2 " in errors[0] and errors[0].endswith("--fsdp_size 2 --use_cpu true")
    assert [path.name for path in tmp_path.iterdir()] == ["problems.jsonl"]  # no lock, no run.partial, no run


def test_every_rank_counting_itself_rank_0_is_refused(monkeypatch):
    class OneProcess:  # what accelerate reports when it set up no distributed run
        num_processes, process_index, backend = 1, 0, None

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="DeepSpeed without a GPU needs the gloo backend named") as error:
        check_one_run(["scripts/adapt.py", "--model", "llama"], use_cpu=False, state=OneProcess())
    if not has_accelerator():
        assert str(error.value).endswith("DS_ACCELERATOR=cpu python scripts/adapt.py --model llama --ddp_backend gloo")


def test_fsdp_with_use_cpu_is_refused(tmp_path, monkeypatch):
    # Trainer(use_cpu=True, fsdp=...) and `accelerate launch --use_fsdp ... --use_cpu true` would run plain DDP.
    with pytest.raises(ValueError, match="--fsdp with --use_cpu true runs plain DDP.*--fsdp_size N"):
        ZeroSiamConfig(output_dir=str(tmp_path), use_cpu=True, fsdp=True)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="asks for FSDP with --use_cpu true, which runs plain DDP") as error:
        check_one_run(["scripts/adapt.py", "--model", "llama"], use_cpu=True)
    assert str(error.value).endswith("torchrun --nproc_per_node 2 scripts/adapt.py --model llama --fsdp_size 2")


def test_fsdp_size_without_the_processes_is_refused(capsys, tiny_model_dir, problems_file, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        adapt.main([*adapt_argv(tiny_model_dir, problems_file, tmp_path / "run"), "--fsdp_size", "2"])
    assert exit_info.value.code == 2
    assert "--fsdp_size 2 shards over 2 processes, but this is one process" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["problems.jsonl"]


# ------------------------------------------------------------------------------------------------- FSDP2 (--fsdp_size)
@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_fsdp2_shards_the_base_and_matches_one_process(
    launcher, tiny_model_dir, eight_problems, one_process_run, tmp_path
):
    output_dir = tmp_path / "run"
    argv = [*adapt_argv(tiny_model_dir, eight_problems, output_dir), *SHARDED, "--fsdp_size", "2"]
    if launcher == "torchrun":
        start = [*TORCHRUN, "--master_port", str(free_port())]
    else:  # accelerate only starts the processes: the shipped config has no FSDP block
        config = str(REPO / "configs" / "accelerate" / "fsdp2.yaml")
        start = [*ACCELERATE, "--config_file", config, "--num_processes", "2", "--main_process_port", str(free_port())]
    result = launch([*start, DRIVER, *argv], {"SHARD_REPORT": tmp_path / "r"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert_ranks_agree(reports(tmp_path / "r"), sharded=True)
    assert_same_as_one_process(output_dir, one_process_run)
    # the saved adapter is whole: plain PEFT in one plain process answers as the reference's adapter does
    prompts = [[1, 2, 3, 4, 5]]
    reloaded = reload_in_fresh_process(tiny_model_dir, str(output_dir), prompts, tmp_path, 4)
    (tmp_path / "reference").mkdir()
    expected = reload_in_fresh_process(tiny_model_dir, str(one_process_run), prompts, tmp_path / "reference", 4)
    torch.testing.assert_close(reloaded["logits"], expected["logits"], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_fsdp2_run_stopped_by_a_signal_resumes_to_the_same_end(tiny_model_dir, eight_problems, tmp_path):
    def run(output_dir, *extra, env=None):
        argv = [*adapt_argv(tiny_model_dir, eight_problems, output_dir), *SHARDED, "--fsdp_size", "2", *extra]
        return launch([*TORCHRUN, "--master_port", str(free_port()), DRIVER, *argv], env)

    whole = run(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]
    stopped = run(tmp_path / "run", "--save_steps", "1", env={"SHARD_STOP_AT": "1"})
    assert stopped.returncode != 0 and "stopped by SIGTERM at step 1 of 2" in stopped.stderr, stopped.stderr[-3000:]
    assert (tmp_path / "run.partial" / "checkpoint-1" / "optimizer.pt").is_file()
    resumed = run(tmp_path / "run", "--save_steps", "1", "--resume_from_checkpoint", "true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("predictions.jsonl", "adapter_model.safetensors"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


@pytest.mark.slow
def test_fsdp2_processes_whose_answers_end_at_different_steps_both_finish(tmp_path):
    # Every forward gathers the layers' shards from both processes, so a process whose answers have ended must keep
    # stepping (synced_gpus) while the other finishes. A second end token, one that the first problem's answer holds
    # early and the second's lacks, makes the two processes' answers (one problem each) end at different steps.
    tokenizer = make_tokenizer()
    everything = write_problems(tmp_path / "all.jsonl", [{"question": q, "answer": a} for q, a in PROBLEMS])
    problems, _ = load_problems(DataArguments(dataset=everything))
    prompts = build_prompts(problems, tokenizer, DataArguments().instruction, 512)["prompt_ids"]
    model = make_model(tokenizer, seed=3)  # a seed whose answers to these prompts differ (seed 0's are all equal)
    answers = greedy(model, tokenizer, prompts, 8)
    first, second, stop = next(
        (a, b, token)
        for a in range(len(answers))
        for b in range(len(answers))
        for token in answers[a][:5]
        if token not in answers[b]
    )
    rows = [{"question": q, "answer": a} for q, a in (PROBLEMS[first], PROBLEMS[second])]
    dataset = write_problems(tmp_path / "problems.jsonl", rows)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    runs = {}
    for name, launcher, per_process in (("one", [sys.executable], 2), ("two", [*TORCHRUN], 1)):
        runs[name] = tmp_path / name
        argv = [*adapt_argv(str(model_dir), dataset, runs[name]), "--max_new_tokens", "8"]
        argv += ["--per_device_train_batch_size", str(per_process)]
        if name == "two":
            launcher += ["--master_port", str(free_port())]
            argv += ["--fsdp_size", "2"]
        result = launch([*launcher, DRIVER, *argv])
        assert result.returncode == 0, result.stderr[-3000:]
    predictions = read_jsonl(runs["two"] / "predictions.jsonl")
    assert predictions[0]["tokens"] < 8 and predictions[1]["tokens"] == 8  # the answers did end at different steps
    assert predictions == read_jsonl(runs["one"] / "predictions.jsonl")


# ------------------------------------------------------------------------------------------------ DeepSpeed ZeRO-2
@pytest.mark.slow
@pytest.mark.skipif(not installed("deepspeed"), reason="deepspeed is not installed ([shard] extra)")
@pytest.mark.skipif(has_accelerator(), reason="the CPU launch (DS_ACCELERATOR=cpu, gloo)")
def test_deepspeed_zero2_matches_one_process(tiny_model_dir, eight_problems, one_process_run, tmp_path):
    output_dir = tmp_path / "run"
    config = ["--config_file", str(REPO / "configs" / "accelerate" / "deepspeed_zero2.yaml")]
    launcher = [*ACCELERATE, *config, "--num_processes", "2", "--main_process_port", str(free_port())]
    argv = [*flags(model=tiny_model_dir, dataset=eight_problems, output_dir=output_dir), *SHARDED]
    argv += flags(report_to="none", disable_tqdm="true", ddp_backend="gloo")
    result = launch([*launcher, DRIVER, *argv], {"SHARD_REPORT": tmp_path / "r", "DS_ACCELERATOR": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert_ranks_agree(reports(tmp_path / "r"), sharded=False)  # ZeRO-2 shards optimizer state and gradients only
    assert_same_as_one_process(output_dir, one_process_run)


# ------------------------------------------------------------------------------------------------ DeepSpeed ZeRO-3
ZERO3 = """compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  zero_stage: 3
  zero3_init_flag: true
  gradient_accumulation_steps: 1
num_machines: 1
num_processes: 2
machine_rank: 0
main_training_function: main
mixed_precision: 'no'
use_cpu: false
"""


@pytest.mark.slow
@pytest.mark.skipif(not installed("deepspeed"), reason="deepspeed is not installed ([shard] extra)")
def test_deepspeed_zero3_is_refused_before_the_model_loads(tiny_model_dir, problems_file, tmp_path):
    (tmp_path / "zero3.yaml").write_text(ZERO3)
    launcher = [*ACCELERATE, "--config_file", str(tmp_path / "zero3.yaml"), "--main_process_port", str(free_port())]
    argv = [*flags(model=tiny_model_dir, dataset=problems_file, output_dir=tmp_path / "run"), "--ddp_backend", "gloo"]
    result = launch([*launcher, str(REPO / "scripts" / "adapt.py"), *argv], {"DS_ACCELERATOR": "cpu"})
    assert result.returncode != 0
    errors = {line for line in result.stderr.splitlines() if line.startswith("error:")}
    assert len(errors) == 1 and "DeepSpeed ZeRO-3 is not supported" in errors.pop(), result.stderr[-3000:]
    assert "Loading weights" not in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["problems.jsonl", "zero3.yaml"]
