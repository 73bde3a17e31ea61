"""One writer per output folder, and runs that are stopped (a signal) or killed, then resumed to the same end."""

import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers import (
    PROBLEMS,
    REPO,
    adapt_argv,
    assert_usage_error,
    flags,
    read_jsonl,
    subprocess_env,
    write_problems,
)
from safetensors.torch import load_file

from zerosiam_hf.commands import adapt
from zerosiam_hf.staging import latest_checkpoint
from zerosiam_hf.trainer import ZeroSiamTrainer


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
