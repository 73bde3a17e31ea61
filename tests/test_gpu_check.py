"""scripts/gpu_check.py at toy shapes on the CPU: every section runs and reports, the update it times trains what
adapt.py trains, and the check needs nothing beyond torch, transformers, peft and accelerate."""

import json
import math
import subprocess
import sys

import torch

from zerosiam_hf.gpu_check import PLANS, adapted_model, random_prompts, run_check, update


def test_the_tiny_plan_runs_every_section_and_writes_one_json(tmp_path):
    output = tmp_path / "check" / "gpu_check.json"
    result = run_check("tiny", output, device="cpu")
    assert json.loads(output.read_text()) == json.loads(json.dumps(result, default=str))
    sections = result["sections"]
    assert list(sections) == list(PLANS["tiny"])
    assert {(r["method"], r["chunk_size"]) for r in sections["loss_head"]["rows"]} == {
        ("tent", 0),
        ("tent", 16),
        ("zerosiam", 0),
        ("zerosiam", 16),
    }
    assert all(r["time_ms"] > 0 for r in sections["loss_head"]["rows"])
    ratios = sections["online_step"]["ratios"]
    assert set(ratios) == {"(generate + update_zerosiam) / generate", "(generate + update_tent) / generate"}
    assert all(math.isfinite(v) and v > 1 for v in ratios.values())  # an update adds time to generation
    step = PLANS["tiny"]["generation"][0]
    for row in sections["generation"]["rows"]:
        assert "error" not in row, row
        assert 0 < row["tokens"] <= row["batch"] * step["answer"] and row["tokens_per_s"] > 0
    assert {r["backend"] for r in sections["generation"]["rows"]} == {"static", "continuous"}
    points = [r for r in sections["long_answers"]["rows"]]
    long = PLANS["tiny"]["long_answers"][0]
    assert len(points) == 2 * len(long["batches"]) * len(long["answers"])
    assert {r["gradient_checkpointing"] for r in points} == {False, True} and all(r["time_s"] > 0 for r in points)
    held = sections["long_answers"]["held"][0]
    # AdamW holds two moments per trainable parameter (and one step count per tensor)
    assert held["trainable_gib"] > 0 and math.isclose(
        held["optimizer_state_gib"], 2 * held["trainable_gib"], rel_tol=0.01
    )


def test_the_timed_update_moves_lora_and_the_predictor_only():
    model, predictor, optimizer = adapted_model("tiny", "float32", "cpu")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    update(model, predictor, optimizer, random_prompts("tiny", 2, 12, "cpu"), 4, "zerosiam")
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert moved and all(("lora_" in name or "zerosiam_predictor" in name) for name in moved)
    assert any("lora_B" in name for name in moved) and any("zerosiam_predictor" in name for name in moved)


def test_the_check_imports_without_datasets_math_verify_or_yaml():
    # A bare GPU image has torch, transformers, peft and accelerate: blocking the project's other requirements
    # (None in sys.modules makes their import fail) must not stop the check from loading.
    code = (
        "import sys\n"
        "for name in ('datasets', 'math_verify', 'gguf', 'bitsandbytes'):\n"
        "    sys.modules[name] = None\n"
        "import zerosiam_hf.gpu_check\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
