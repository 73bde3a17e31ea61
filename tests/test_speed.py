"""Tests for scripts/measure_speed.py on tiny shapes and the tiny model (the report's structure, ratios and errors),
and for the helpers that time one update and read its peak memory."""

import importlib.util
import json
import statistics

import pytest
import torch
from helpers import REPO

from zerosiam_hf.bench.speed import RATIOS


# Loaded from its file: putting scripts/ on sys.path would let scripts/evaluate.py shadow the `evaluate` package.
_spec = importlib.util.spec_from_file_location("measure_speed", REPO / "scripts" / "measure_speed.py")
measure_speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(measure_speed)


def test_loss_head_stage_reports_every_variant_and_the_ratios(tmp_path):
    output = tmp_path / "bench" / "loss_head.json"
    argv = ["--tokens", "12", "--hidden", "8", "--vocab", "40", "--chunk_size", "5", "--methods", "tent", "zerosiam"]
    report = measure_speed.main([*argv, "--warmup", "0", "--repeats", "2", "--output_json", str(output)])

    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    (shape,) = report["loss_head"]
    assert (shape["tokens"], shape["hidden"], shape["vocab"]) == (12, 8, 40)
    variants = {(r["method"], r["implementation"]): r for r in shape["results"]}
    assert set(variants) == {(m, i) for m in ("tent", "zerosiam") for i in ("naive", "chunked")}
    assert variants["zerosiam", "chunked"]["chunk_size"] == 5 and variants["tent", "naive"]["chunk_size"] == 0
    for result in variants.values():
        assert len(result["times_ms"]) == 2 and result["time_ms"] > 0 and result["cpu_ms"] >= 0
        assert result["peak_mib"] > -1  # an RSS difference: at these sizes, within a page count's rounding of 0
    ratios = {r["ratio"]: r for r in shape["ratios"]}
    time_ratio = ratios["CPU time zerosiam chunked / tent chunked"]
    expected = variants["zerosiam", "chunked"]["cpu_ms"] / variants["tent", "chunked"]["cpu_ms"]
    assert time_ratio == {"ratio": "CPU time zerosiam chunked / tent chunked", "value": pytest.approx(expected)}


def test_the_loss_head_goals_in_speed_md_name_ratios_the_report_gives():
    """The goals live in docs/SPEED.md, not in code; each loss-head goal names a ratio the report computes."""
    text = (REPO / "docs/SPEED.md").read_text()
    goals = text[text.index("## Goals") : text.index("## Loss head")]
    names = [line.split("|")[1].split(" (")[0].strip() for line in goals.splitlines() if "<=" in line]
    loss_head = [name for name in names if not name.startswith("online")]
    assert len(loss_head) == 2 and set(loss_head) <= {name for name, _, _ in RATIOS}


def test_online_stage_times_every_variant_on_the_same_prompts(tiny_model_dir, problems_file, tmp_path):
    output = tmp_path / "online.json"
    argv = ["--stages", "online", "--online_model", tiny_model_dir, "--online_dataset", problems_file]
    argv += ["--online_prompts", "4", "--online_batch_size", "2", "--online_max_new_tokens", "3"]
    report = measure_speed.main([*argv, "--output_json", str(output)])

    assert "loss_head" not in report
    online = report["online"]
    rows = {row["variant"]: row for row in online["rows"]}
    assert list(rows) == ["evaluate", "none", "tent", "zerosiam"]
    assert rows["evaluate"]["ratio_to_evaluate"] == 1.0
    for row in rows.values():
        assert row["seconds"] > 0 and 1 <= row["answer_tokens"] <= 3
        assert row["ratio_to_evaluate"] == pytest.approx(row["seconds"] / rows["evaluate"]["seconds"])
    assert online["data"]["selected"] == 4 and online["settings"]["online_batch_size"] == 2


def test_roofline_stage_times_every_phase_against_the_floor_of_the_measured_ceilings(tiny_model_dir, tmp_path):
    argv = ["--stages", "roofline", "--roofline_model", tiny_model_dir, "--roofline_dtype", "float32"]
    argv += ["--roofline_batch", "2", "--roofline_prompt", "6", "--roofline_answer", "3", "--repeats", "1"]
    report = measure_speed.main([*argv, "--output_json", str(tmp_path / "roofline.json")])

    roofline = report["roofline"]
    assert set(roofline["ceilings"]["flops"]) == {"float32", "bfloat16"} and roofline["ceilings"]["bandwidth"] > 0
    rows = {row["phase"]: row for row in roofline["rows"]}
    assert list(rows) == [
        "prefill",
        "decoding step (forward)",
        "decoding step (generate)",
        "update forward + loss head",
        "update backward",
        "loss head (forward + backward)",
        "optimizer step",
    ]
    peak, bandwidth = roofline["ceilings"]["flops"]["float32"], roofline["ceilings"]["bandwidth"]
    for row in rows.values():
        floor = max(row["gflop"] * 1e9 / peak, row["mb"] * 2**20 / bandwidth)
        assert row["ms"] > 0 and row["floor_ms"] == pytest.approx(floor * 1e3)
        assert row["fraction"] == pytest.approx(row["floor_ms"] / row["ms"])
    assert (
        rows["optimizer step"]["bound"] == "memory"
        and rows["prefill"]["gflop"] > rows["decoding step (forward)"]["gflop"]
    )
    assert roofline["settings"]["dtype"] == "float32"


def test_generation_stage_times_both_backends_on_the_same_prompts(tiny_model_dir, problems_file, tmp_path):
    output = tmp_path / "generation.json"
    argv = ["--stages", "generation", "--online_model", tiny_model_dir, "--online_dataset", problems_file]
    argv += ["--generation_prompts", "4", "--generation_batch_sizes", "2", "4", "--generation_max_new_tokens", "3"]
    report = measure_speed.main([*argv, "--generation_rounds", "2", "--output_json", str(output)])

    assert json.loads(output.read_text()) == json.loads(json.dumps(report))
    rows = report["generation"]["rows"]
    assert [row["batch_size"] for row in rows] == [2, 4]
    for row in rows:
        assert row["same_answers"] and len(row["answer_lengths"]) == 4 and row["tokens"] == sum(row["answer_lengths"])
        for times in (*row["seconds"].values(), *row["cpu_seconds"].values()):
            assert len(times) == 2 and min(times) > 0
        static, continuous = (statistics.median(row["seconds"][b]) for b in ("static", "continuous"))
        assert row["ratio"] == pytest.approx(statistics.median(row["ratio_per_round"]))
        assert row["continuous_tokens_per_s"] / row["static_tokens_per_s"] == pytest.approx(static / continuous)


def test_decoding_stage_times_each_variant_against_eager_and_compares_their_tokens(tiny_model_dir, tmp_path):
    # eager and the static cache only: compiling even the tiny model takes a minute on a 2-core CPU (slow test below)
    argv = ["--stages", "decoding", "--roofline_model", tiny_model_dir, "--roofline_dtype", "float32"]
    argv += ["--roofline_batch", "2", "--roofline_prompt", "6", "--roofline_answer", "5", "--repeats", "2"]
    report = measure_speed.main([*argv, "--decoding_variants", "static", "--output_json", str(tmp_path / "d.json")])

    decoding = report["decoding"]
    assert decoding["settings"] == {
        "batch": 2,
        "prompt": 6,
        "answer": 5,
        "repeats": 2,
        "model": tiny_model_dir,
        "dtype": "float32",
    }
    assert report["versions"]["transformers"] and report["machine"]["torch"]
    eager, static = decoding["variants"]["eager"], decoding["variants"]["static"]
    assert list(decoding["variants"]) == ["eager", "static"]  # eager timed first, though not asked for
    for row in (eager, static):
        assert row["first_s"] > 0 and row["answer_s"] > 0 and row["prefill_s"] > 0
        assert row["step_ms"] == pytest.approx(1000 * (row["answer_s"] - row["prefill_s"]) / 4)
        assert "compile_s" not in row and "break_even_steps" not in row  # neither compiles
    assert eager["speedup"] == 1 and static["speedup"] == pytest.approx(eager["step_ms"] / static["step_ms"])
    # float32 on a tiny model: the preallocated cache gives eager's greedy tokens
    assert eager["first_differences"] == static["first_differences"] == [None, None]
    assert eager["rows_equal"] == static["rows_equal"] == 2


@pytest.mark.slow
def test_compiled_decoding_gives_eager_greedy_tokens_in_float32(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from zerosiam_hf.bench.decoding import measure_decoding

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    report = measure_decoding(model, batch=2, prompt=6, answer=8, repeats=1, variants=["compiled"])
    compiled = report["variants"]["compiled"]
    assert compiled["first_differences"] == [None, None] and compiled["compile_s"] > 0


def test_a_compile_that_transformers_refuses_is_an_error_not_an_eager_row(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    from zerosiam_hf.bench import decoding

    def refused(base, variant, device):
        config = original(base, variant, device)
        config.disable_compile = True  # as transformers' criteria refusing the device: it then decodes eagerly
        return config

    original = decoding.decoding_config
    monkeypatch.setattr(decoding, "decoding_config", refused)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="transformers did not compile the decoding step of variant compiled"):
        decoding.measure_decoding(model, batch=2, prompt=6, answer=3, repeats=1, variants=["compiled"])


def test_decoding_variant_configs_ask_transformers_for_a_static_cache_and_its_compiled_step():
    from transformers import GenerationConfig

    from zerosiam_hf.bench.decoding import decoding_config

    base = GenerationConfig(max_new_tokens=4, do_sample=False)
    assert decoding_config(base, "eager", "cpu").cache_implementation is None
    assert decoding_config(base, "static", "cpu").compile_config is None
    cpu, cpp, gpu = (
        decoding_config(base, v, d) for v, d in [("compiled", "cpu"), ("compiled_cpp", "cpu"), ("compiled", "cuda")]
    )
    assert {cpu.cache_implementation, cpp.cache_implementation, gpu.cache_implementation} == {"static"}
    assert cpu.compile_config._compile_all_devices and cpu.compile_config.mode == "default"
    assert cpp.compile_config.mode is None and cpp.compile_config.options == {"cpp_wrapper": True}
    assert gpu.compile_config.mode == "reduce-overhead"  # CUDA graphs
    assert base.cache_implementation is None and base.compile_config is None  # the base is left as it was


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "magic"], "--methods takes"),
        (["--tokens", "0"], "--tokens must be >= 1"),
        (["--stages", "everything"], "--stages takes loss_head, online, generation, roofline, decoding"),
        (["--decoding_variants", "jit"], "--decoding_variants takes eager, static, compiled, compiled_cpp"),
        (["--stages", "decoding", "--roofline_answer", "1"], "answers of 2 or more tokens (--roofline_answer)"),
        (["--generation_batch_sizes", "16", "0"], "--generation_batch_sizes must be positive"),
        (["--roofline_method", "ttrl"], "--roofline_method times a loss-head update: one of tent, come, zerosiam"),
    ],
)
def test_bad_arguments_exit_with_one_line(capsys, tmp_path, argv, message):
    output = tmp_path / "never.json"
    with pytest.raises(SystemExit) as exit_info:
        measure_speed.main([*argv, "--output_json", str(output)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not output.exists()
