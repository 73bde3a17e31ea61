"""scripts/gpu_check.py at toy shapes on the CPU: every section runs and reports, the update it times trains what
adapt.py trains with the method's own loss, a generation step stops at its budget, and the check needs nothing beyond
torch, transformers, peft and accelerate (datasets for the roofline)."""

import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from helpers import REPO

from zerosiam_hf.bench.gpu_check import (
    PLANS,
    adapted_model,
    build_model,
    generation_section,
    method_loss,
    random_prompts,
    run_check,
    special_tokenizer,
    update,
)
from zerosiam_hf.config import ZeroSiamConfig
from zerosiam_hf.trainer import ZeroSiamTrainer


# Loaded from its file, as tests/test_speed.py loads measure_speed.py: scripts/ is not a package.
_spec = importlib.util.spec_from_file_location("gpu_check_script", REPO / "scripts" / "gpu_check.py")
gpu_check_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check_script)


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
    roofline = sections["roofline"]
    assert set(roofline["ceilings"]["flops"]) == {"float32", "bfloat16"} and roofline["ceilings"]["bandwidth"] > 0
    phases = [row["phase"] for row in roofline["rows"]]
    assert phases[0] == "prefill" and "update backward" in phases and "optimizer step" in phases
    assert all(row["ms"] > 0 and row["floor_ms"] > 0 for row in roofline["rows"])
    decoding = sections["decoding"]
    assert list(decoding["variants"]) == ["eager", "static"] and decoding["settings"]["answer"] == 4
    assert all(row["step_ms"] > 0 and row["rows_equal"] == 2 for row in decoding["variants"].values())


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
        "import zerosiam_hf.bench.gpu_check\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_the_timed_loss_is_the_methods_own_loss_as_the_trainer_computes_it(tmp_path):
    # the trainer's compute_loss runs the method's hook; the check's loss must equal it, value and gradients
    ids = random_prompts("tiny", 2, 12, "cpu")
    prompts = Dataset.from_dict({"index": [0, 1], "prompt_ids": ids[:, :4].tolist()})
    args = ZeroSiamConfig(output_dir=str(tmp_path), report_to="none", disable_tqdm=True, use_cpu=True)
    trainer = ZeroSiamTrainer(
        build_model("tiny", "float32", "cpu"), args, prompts, special_tokenizer(), gold={0: 0, 1: 0}
    )
    model = trainer.model.train()
    # LoRA's B starts at zero and the predictor at the identity: move both, so that LoRA and the alignment term
    # (its weight alpha, the target's stop-gradient) take part in the loss
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "zerosiam_predictor" in name:
                param.add_(torch.randn_like(param), alpha=0.1)
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    loss_mask[:, 3:-1] = True
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": loss_mask}
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses, grads = [], []
    for compute in (
        lambda: trainer.compute_loss(model, inputs),
        lambda: method_loss(model, trainer.predictor, ids, 4, "zerosiam"),
    ):
        model.zero_grad(set_to_none=True)
        loss = compute()
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in trainable])
    assert torch.allclose(losses[0], losses[1])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_a_generation_step_past_its_budget_records_its_rows_as_skipped():
    step = {**PLANS["tiny"]["generation"][0], "budget_s": 0}
    rows = generation_section([step], "cpu")["rows"]
    assert {r["backend"] for r in rows} == {"static", "continuous"}
    assert all("predicted" in r["skipped"] and "time_s" not in r for r in rows)


def test_the_script_runs_the_sections_asked_and_refuses_the_roofline_without_datasets(tmp_path, capsys, monkeypatch):
    output = tmp_path / "check.json"
    result = gpu_check_script.main(["--plan", "tiny", "--sections", "loss_head", "--output", str(output)])
    assert list(result["sections"]) == ["loss_head"] and json.loads(output.read_text())["plan"] == "tiny"

    monkeypatch.setitem(sys.modules, "datasets", None)  # a bare GPU image's
    with pytest.raises(SystemExit) as exit_info:
        gpu_check_script.main(["--plan", "tiny", "--output", str(tmp_path / "never.json")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err and "needs the datasets package" in err
    assert not (tmp_path / "never.json").exists()
