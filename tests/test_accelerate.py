"""adapt.py under `accelerate launch`: one process with the shipped config, and two CPU processes."""

import json
import re
import socket
import subprocess
import sys

from helpers import (
    FAST_ON_ANY_DEVICE,
    PROBLEMS,
    REPO,
    adapt_argv,
    flags,
    read_jsonl,
    subprocess_env,
)


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


def test_accelerate_launch_one_process_with_the_shipped_config_prints_no_warning(
    tiny_model_dir, problems_file, tmp_path
):
    # The README's launch: no accelerate defaults to warn about, and (without --use_cpu) no pin_memory warning on
    # a machine without an accelerator.
    output_dir = tmp_path / "run"
    launcher = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch"]
    config = ["--config_file", str(REPO / "configs" / "accelerate" / "one_process.yaml")]
    argv = [*flags(model=tiny_model_dir, dataset=problems_file, output_dir=output_dir), *FAST_ON_ANY_DEVICE]
    command = [*launcher, *config, str(REPO / "scripts" / "adapt.py"), *argv]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not re.search(r"warn|were not passed", result.stderr, re.IGNORECASE), result.stderr[-3000:]
    assert f"adapter and run record in {output_dir}" in result.stdout
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
