"""The package works where pip puts it: a wheel installed without -e into its own environment runs its commands
and resolves the shipped model aliases from a folder outside the checkout."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import PROBLEMS, REPO, write_problems


pytestmark = pytest.mark.slow  # builds a wheel and a virtual environment: about a minute


def run(argv: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A wheel built from a copy of the checkout, installed (no -e, no dependencies) into a new virtual environment;
    its dependencies come from this interpreter's site-packages through PYTHONPATH, so nothing is downloaded."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv*", "outputs", "build", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env = {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", source],
        root,
        env,
    )
    (wheel,) = (root / "dist").glob("zerosiam_hf-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], root, env)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], root, env)
    # The editable install of this interpreter's site-packages is a .pth hook, which PYTHONPATH does not run.
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return {"bin": venv / "bin", "python": python, "env": env, "cwd": elsewhere}


def test_the_installed_package_is_the_wheel(installed):
    where = run([installed["python"], "-c", "import zerosiam_hf; print(zerosiam_hf.__file__)"], **_at(installed))
    assert Path(where.stdout.strip()).is_relative_to(installed["bin"].parent)


def test_commands_and_aliases_work_outside_the_checkout(installed, tiny_model_dir):
    usage = run([installed["bin"] / "zerosiam-adapt", "--help"], **_at(installed))
    assert "--model" in usage.stdout and "--learning_rate" in usage.stdout
    code = "from zerosiam_hf.modeling import resolve_model; import json; print(json.dumps(resolve_model('llama')))"
    spec = json.loads(run([installed["python"], "-c", code], **_at(installed)).stdout)
    assert spec["alias"] == "llama" and spec["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"

    dataset = write_problems(installed["cwd"] / "problems.jsonl", [{"question": q, "answer": a} for q, a in PROBLEMS])
    flags = ["--model", tiny_model_dir, "--dataset", dataset, "--output_dir", "run", "--max_new_tokens", "4"]
    flags += ["--per_device_train_batch_size", "3", "--report_to", "none", "--use_cpu", "true"]
    run([installed["bin"] / "zerosiam-adapt", *flags], **_at(installed))
    record = json.loads((installed["cwd"] / "run" / "run.json").read_text())
    assert record["results"]["online"]["n"] == len(PROBLEMS) and record["results"]["steps"] == 2
    assert (installed["cwd"] / "run" / "adapter_model.safetensors").is_file()


def _at(installed: dict) -> dict:
    return {"cwd": installed["cwd"], "env": installed["env"]}
