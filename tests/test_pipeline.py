"""Tests for the library side of a run: staged output folders, what a run's record is matched by, the commands a run
suggests (started the way it was), its closing summary, and a package import that changes nothing."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from zerosiam_hf import invocation, pipeline
from zerosiam_hf.data import DataArguments
from zerosiam_hf.modeling import ModelArguments, auto_dtype
from zerosiam_hf.quantization import bitsandbytes_available
from zerosiam_hf.records import matching_record, write_json
from zerosiam_hf.staging import LOCK_FILE, MARKER_FILE, staged_output, staging_path


COMMANDS = Path(pipeline.__file__).parent / "commands"
SCRIPTS = Path(pipeline.__file__).parent.parent / "scripts"


# ------------------------------------------------------------------------------------------------------ staged output
def test_staged_output_publishes_a_finished_block_and_keeps_a_failed_one_aside(tmp_path):
    target = str(tmp_path / "out")
    config = {"Section": {"value": 1}}
    with staged_output(target, config) as staging:
        assert staging == staging_path(target) and (staging / LOCK_FILE).is_file()
        write_json(staging / "run.json", {"config": config})
    assert json.loads((tmp_path / "out" / "run.json").read_text()) == {"config": config}
    assert not (tmp_path / "out" / LOCK_FILE).exists() and not staging_path(target).exists()

    other = {"Section": {"value": 2}}
    with pytest.raises(ValueError, match="already holds a different run"):  # refused before anything is opened
        with staged_output(target, other):
            raise AssertionError("the block ran")
    with pytest.raises(RuntimeError, match="boom"):
        with staged_output(target, other, overwrite=True) as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert json.loads((tmp_path / "out" / "run.json").read_text()) == {"config": config}  # not replaced
    assert (staging / "half.txt").is_file() and (staging / MARKER_FILE).is_file()  # kept aside, unlocked
    assert not (staging / LOCK_FILE).exists()


def test_a_record_written_with_the_old_name_of_the_output_group_still_matches(tmp_path):
    # Reporting settings only (overwrite) once sat in a section called AdaptArguments: still the same run.
    old = {"AdaptArguments": {"overwrite": False}, "ZeroSiamConfig": {"method": "tent", "output_dir": "a"}}
    write_json(tmp_path / "run.json", {"config": old})
    new = {"OutputArguments": {"overwrite": True}, "ZeroSiamConfig": {"method": "tent", "output_dir": "b"}}
    assert matching_record(str(tmp_path), new) is not None
    assert matching_record(str(tmp_path), {**new, "ZeroSiamConfig": {"method": "zerosiam"}}) is None


def test_a_record_written_before_a_setting_existed_matches_while_it_is_left_unset(tmp_path):
    # A method or option added since (None: not set) leaves the runs already made theirs; a value set does not.
    write_json(tmp_path / "run.json", {"config": {"ZeroSiamConfig": {"method": "tent", "alpha": None}}})
    unset = {"ZeroSiamConfig": {"method": "tent", "alpha": None, "intrinsic_reward": None}}
    assert matching_record(str(tmp_path), unset) is not None
    for changed in ({"intrinsic_reward": "probability"}, {"alpha": 1.0}):
        config = {"ZeroSiamConfig": {**unset["ZeroSiamConfig"], **changed}}
        assert matching_record(str(tmp_path), config) is None


@pytest.mark.parametrize("method", ["none", "slot", "em_inf"])
def test_a_method_that_takes_no_optimizer_step_matches_whatever_the_optimizer_and_guard_settings(tmp_path, method):
    # The runs of none (and of the per-prompt methods, which have their own step sizes) at other learning rates, or
    # with the collapse guard that resets weights they never move, compute the same; one that trains LoRA does not.
    made = {"method": method, "learning_rate": 1e-4, "max_grad_norm": 1.0, "seed": 0, "collapse_guard": False}
    guarded = {"collapse_guard": True, "collapse_min_entropy": 0.5, "collapse_max_degenerate": 0.2}
    write_json(tmp_path / "run.json", {"config": {"ZeroSiamConfig": made}})
    assert matching_record(str(tmp_path), {"ZeroSiamConfig": {**made, "learning_rate": 5e-3, "max_grad_norm": 0.0}})
    assert matching_record(str(tmp_path), {"ZeroSiamConfig": {**made, **guarded}})
    assert matching_record(str(tmp_path), {"ZeroSiamConfig": {**made, "seed": 1}}) is None
    tent = {**made, "method": "tent"}
    write_json(tmp_path / "run.json", {"config": {"ZeroSiamConfig": tent}})
    assert matching_record(str(tmp_path), {"ZeroSiamConfig": {**tent, "learning_rate": 5e-3}}) is None
    assert matching_record(str(tmp_path), {"ZeroSiamConfig": {**tent, **guarded}}) is None


@pytest.mark.parametrize(
    ("guard", "batch", "matches"),
    [(False, 1, True), (True, 4, True), (True, 8, True), (True, 1, False), (True, 2, False)],
)
def test_collapse_min_answers_disowns_a_record_made_before_it_only_where_it_changes_the_run(
    tmp_path, guard, batch, matches
):
    # Before the option the guard read each batch alone: so it does still, without the guard or at batches of 4 or
    # more; at smaller batches it now reads 4 answers, and the older guarded run computed otherwise.
    made = {"method": "tent", "seed": 0, "collapse_guard": guard, "per_device_train_batch_size": batch}
    write_json(tmp_path / "run.json", {"config": {"ZeroSiamConfig": made}})
    found = matching_record(str(tmp_path), {"ZeroSiamConfig": {**made, "collapse_min_answers": 4}})
    assert (found is not None) == matches
    # a comparison's shared run settings the same way
    shared = {"collapse_guard": guard, "per_device_train_batch_size": batch}
    write_json(tmp_path / "comparison.json", {"config": {"SharedRunConfig": shared}})
    found = matching_record(
        str(tmp_path), {"SharedRunConfig": {**shared, "collapse_min_answers": 4}}, "comparison.json"
    )
    assert (found is not None) == matches


# --------------------------------------------------------------------------------------------- the commands suggested
@pytest.mark.parametrize(
    ("parent", "expected"),
    [
        (  # `accelerate launch ...` as the console command runs it
            [
                "/venv/bin/python",
                "/venv/bin/accelerate",
                "launch",
                "--multi_gpu",
                "--num_processes",
                "2",
                "a.py",
                "-x",
            ],
            ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "a.py"],
        ),
        (  # the same through python -m, with a config file
            ["python", "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", "c d.yaml", "a.py"],
            ["accelerate", "launch", "--config_file", "c d.yaml", "a.py"],
        ),
        (["bash"], ["python", "a.py"]),  # not launched by accelerate
    ],
)
def test_the_launcher_is_the_one_the_run_was_started_with(monkeypatch, parent, expected):
    monkeypatch.setattr(invocation, "_parent_command", lambda: parent)
    assert invocation.launcher("a.py") == expected


def test_resume_command_keeps_launcher_and_flags_and_quotes_paths(monkeypatch):
    monkeypatch.setattr(invocation, "_parent_command", lambda: ["accelerate", "launch", "--cpu", "scripts/adapt.py"])
    command = ["scripts/adapt.py", "--output_dir", "my runs/a", "--resume_from_checkpoint", "old", "--seed", "1"]
    hint = invocation.resume_command(command)
    assert shlex.split(hint) == [
        *["accelerate", "launch", "--cpu", "scripts/adapt.py", "--output_dir", "my runs/a", "--seed", "1"],
        *["--resume_from_checkpoint", "true"],
    ]
    # a comparison resumes its stopped run when run again as it was
    monkeypatch.setattr(invocation, "_parent_command", lambda: ["accelerate", "launch", "--cpu", "compare.py", "-s"])
    assert invocation.same_command(["compare.py", "--seeds", "0"]) == "accelerate launch --cpu compare.py --seeds 0"
    monkeypatch.setattr(invocation, "_parent_command", lambda: [])
    module = str(COMMANDS / "adapt.py")  # sys.argv[0] under python -m zerosiam_hf.commands.adapt
    assert shlex.split(invocation.resume_command([module, "--seed", "1"]))[:3] == [
        "python",
        "-m",
        "zerosiam_hf.commands.adapt",
    ]


def test_a_suggested_launch_adds_only_the_flags_the_command_lacks(monkeypatch):
    monkeypatch.setattr(invocation, "_parent_command", lambda: [])
    command = ["scripts/adapt.py", "--use_cpu", "false", "--fsdp", "full_shard", "--seed", "1"]
    fix = invocation.with_flags(command, "--use_cpu", "true", "--ddp_backend", "gloo", env="DS_ACCELERATOR=cpu")
    assert shlex.split(fix) == ["DS_ACCELERATOR=cpu", "python", *command, "--ddp_backend", "gloo"]
    # torchrun drops the Trainer's --fsdp and starts a console command as its module
    fix = invocation.torchrun_command(command, 2, "--fsdp_size", "2")
    assert fix == "torchrun --nproc_per_node 2 scripts/adapt.py --use_cpu false --seed 1 --fsdp_size 2"
    fix = invocation.torchrun_command(["/venv/bin/zerosiam-adapt"], 4)
    assert fix == "torchrun --nproc_per_node 4 -m zerosiam_hf.commands.adapt"


def test_the_evaluate_hint_runs_the_sibling_command_with_the_runs_model_and_data_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # an activated .venv would put the console commands on it
    record = {"command": [str(SCRIPTS / "adapt.py")], "config": {"ZeroSiamConfig": {"output_dir": "out dir"}}}
    data_args = DataArguments(dataset=str(tmp_path / "p.jsonl"), max_samples=8)
    # the generation settings of ZeroSiamConfig
    args = SimpleNamespace(max_new_tokens=96, max_prompt_length=512, generation_backend="static")
    hint = shlex.split(pipeline.evaluate_command(record, ModelArguments(model="llama"), data_args, args))
    assert hint == [
        *["python", str(SCRIPTS / "evaluate.py"), "--model", "llama", "--dataset", str(tmp_path / "p.jsonl")],
        *["--max_samples", "8", "--max_new_tokens", "96", "--adapter", "out dir"],
    ]
    record["command"] = [str(tmp_path / "zerosiam-adapt")]  # a console command the shell does not find by name
    hint = shlex.split(pipeline.evaluate_command(record, ModelArguments(model="llama"), DataArguments(), args))
    assert hint[0] == str(tmp_path / "zerosiam-evaluate") and hint[-2:] == ["--adapter", "out dir"]
    args.generation_backend = "continuous"  # the run's backend answers the evaluation too
    hint = shlex.split(pipeline.evaluate_command(record, ModelArguments(model="llama"), DataArguments(), args))
    assert hint[-4:] == ["--generation_backend", "continuous", "--adapter", "out dir"]


@pytest.mark.skipif(not bitsandbytes_available(), reason="needs bitsandbytes (the quant extra)")
def test_the_evaluate_hint_keeps_a_4bit_base():
    record = {"command": ["somewhere/run.py"], "config": {"ZeroSiamConfig": {"output_dir": "out"}}}
    args = SimpleNamespace(max_new_tokens=256, max_prompt_length=512, generation_backend="static")
    model_args = ModelArguments(model="llama", load_in_4bit=True)
    hint = shlex.split(pipeline.evaluate_command(record, model_args, DataArguments(), args))
    assert hint == ["zerosiam-evaluate", "--model", "llama", "--load_in_4bit", "true", "--adapter", "out"]


def test_summary_names_accuracy_entropy_degenerate_share_skips_cut_answers_and_the_folder(tmp_path):
    rows = [{"index": i, "tokens": tokens} for i, tokens in enumerate([4, 2, 4, 4])]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    online = {"n": 4, "accuracy_strict": 25.0, "accuracy_flexible": 50.0}
    record = {
        "config": {"ZeroSiamConfig": {"method": "zerosiam", "output_dir": str(tmp_path), "max_new_tokens": 4}},
        "timings": {"adapt_seconds": 12.3},
        "results": {"online": online, "steps": 2},
        "log_history": [
            {"step": 1, "collapse/entropy": 1.5, "answers/degenerate": 0.0, "guard/skipped_updates": 0},
            {"step": 2, "collapse/entropy": 0.75, "answers/degenerate": 0.5, "guard/skipped_updates": 1},
        ],
    }
    assert pipeline.summary(record) == [
        "online accuracy over 4 answers: strict 25.00%, flexible 50.00% (zerosiam, 12 s)",
        "3 of 4 answers were cut at --max_new_tokens 4",
        "clean-branch entropy: 1.500 nats at step 1, 0.750 at step 2",
        "degenerate answers 25.0% (mean over batches); updates skipped (NaN or Inf) 1",
        f"adapter and run record in {tmp_path}",
    ]


# ---------------------------------------------------------------------------------------------------------- importing
def test_a_command_imports_no_optional_engine_and_the_library_hides_none():
    """Under a command, peft and accelerate find bitsandbytes and DeepSpeed absent (their import would print lines
    and ask the hub for a kernel), even after accelerate unwraps a model; importing the library alone hides nothing."""
    state = (
        "[{None: 'hidden'}.get(sys.modules.get(name, 0), 'imported' if name in sys.modules else 'absent') "
        "for name in ('bitsandbytes', 'deepspeed')]"
    )
    library = f"import sys, zerosiam_hf.pipeline; print('hidden' in {state})"
    command = (
        "import sys, torch, zerosiam_hf.commands.adapt; from accelerate import Accelerator; "
        f"Accelerator(cpu=True).unwrap_model(torch.nn.Linear(1, 1)); print({state})"
    )
    env = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_DEEPSPEED"}
    for probe, expected in [(library, "False"), (command, "['hidden', 'hidden']")]:
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
        assert result.stdout.strip() == expected, result.stderr[-2000:]


def test_deepspeed_asked_for_on_the_command_line_is_not_hidden_and_in_a_config_file_is_one_line(tmp_path):
    """A DeepSpeed config needs DeepSpeed when transformers is imported: `--deepspeed` on the command line keeps it
    importable; in a --config file (read after that import) it is refused with advice that works."""
    build = (
        "import sys; sys.argv += {argv!r}; import zerosiam_hf.commands; "
        "from zerosiam_hf.config import ZeroSiamConfig; ZeroSiamConfig(output_dir={out!r}, use_cpu=True, "
        "deepspeed={{'zero_optimization': {{'stage': 2}}}}); "
        "from zerosiam_hf.engines import hidden; print(hidden('deepspeed'))"
    )
    env = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_DEEPSPEED"}
    env["DS_ACCELERATOR"] = "cpu"
    out = str(tmp_path / "run")
    for argv, expected in [(["--deepspeed", "ds.json"], "False"), ([], "refused")]:
        probe = build.format(argv=argv, out=out)
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
        if expected == "refused":
            assert "ValueError: deepspeed given in a --config file" in result.stderr.splitlines()[-1]
        else:
            assert result.stdout.strip() == expected, result.stderr[-2000:]


@pytest.mark.parametrize(
    ("cuda", "use_cpu", "amx", "avx512_bf16", "expected"),
    [
        (False, False, False, False, torch.float32),
        (False, False, True, False, torch.bfloat16),
        (False, False, False, True, torch.bfloat16),
        (True, False, False, False, torch.bfloat16),
        # --use_cpu true on a machine with a GPU: the CPU computes, so its units decide
        (True, True, False, False, torch.float32),
        (True, True, True, False, torch.bfloat16),
    ],
)
def test_dtype_auto_is_bf16_only_where_the_matrix_units_compute_it(
    monkeypatch, cuda, use_cpu, amx, avx512_bf16, expected
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert auto_dtype(use_cpu) is expected
