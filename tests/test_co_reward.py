"""Co-rewarding II (`co_reward`): the teacher's EMA and its cosine rate, the reward against the teacher's majority
answer, each against a formula written here; the teacher answering with its own weights and leaving the student's
bit for bit; what moves; the teacher's state through checkpoints and resets; its tokens in the cost."""

import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_only_lora_moved, make_config, make_model
from torch import nn
from transformers import TrainerCallback

from zerosiam_hf import ZeroSiamTrainer
from zerosiam_hf.checkers import NumericChecker
from zerosiam_hf.methods import METHODS
from zerosiam_hf.methods.co_reward import ema_update, teacher_rate
from zerosiam_hf.trainer import METHOD_STATE_FILE, PromptCollator


CO_REWARD = METHODS["co_reward"]


def lora(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------------------------------- by hand
def test_the_teacher_rate_is_a_cosine_from_start_to_end():
    start, end, total = 0.01, 1e-5, 10
    assert teacher_rate(0, total, start, end) == pytest.approx(start)
    assert teacher_rate(5, total, start, end) == pytest.approx((start + end) / 2)
    assert teacher_rate(2, total, start, end) == pytest.approx(end + (start - end) * (1 + math.cos(math.pi / 5)) / 2)
    assert teacher_rate(10, total, start, end) == pytest.approx(end)
    assert teacher_rate(12, total, start, end) == pytest.approx(end)  # past the end: the last rate


def test_the_ema_update_by_hand():
    teacher = {"w": torch.tensor([1.0, 2.0, -4.0])}
    student = {"w": torch.tensor([3.0, -2.0, -4.0], dtype=torch.float64)}
    ema_update(teacher, student, 0.25)  # 0.75 teacher + 0.25 student
    assert torch.equal(teacher["w"], torch.tensor([1.5, 1.0, -4.0])) and teacher["w"].dtype == torch.float32


def test_rates_above_one_are_refused():
    with pytest.raises(ValueError, match="--teacher_rate_start is the new weights' share and must be <= 1, got 2"):
        CO_REWARD.options_class(teacher_rate_start=2.0)


class _SpyChecker(NumericChecker):
    """The numeric checker, keeping every gold it is handed."""

    def __init__(self):
        self.golds = []

    def score(self, texts, golds):
        self.golds += golds
        return super().score(texts, golds)


def _fake_trainer(teacher_texts: list[str], k: int):
    """What `from_answers` reads of a trainer, with a one-parameter model and a teacher generation that answers
    `teacher_texts` and notes the parameter's value it ran with."""
    model = nn.Linear(1, 1, bias=False)
    nn.init.constant_(model.weight, 5.0)
    seen = []

    def generate(prompt_ids, prompt_mask):
        seen.append(model.weight.detach().clone())
        return [[i] for i in range(len(teacher_texts))]

    dataset = [{"index": i, "prompt_ids": [1, 2, 3][: i + 1]} for i in range(3)]

    trainer = SimpleNamespace(
        args=SimpleNamespace(num_generations=k, device="cpu", co_reward_variant="II"),
        checker=_SpyChecker(),
        model=model,
        accelerator=SimpleNamespace(unwrap_model=lambda m: m),
        method_state={"weight": torch.full((1, 1), -1.0)},
        prompt_rows=lambda index: [dataset[i] for i in index],
        data_collator=PromptCollator(0),
        processing_class=SimpleNamespace(batch_decode=lambda ids, **_: [teacher_texts[i[0]] for i in ids]),
        _generate=generate,
        log_metrics_step=lambda metrics: None,
    )
    return trainer, seen


def test_the_reward_is_agreement_with_the_teachers_majority_answer_by_hand():
    # prompt 0: the teacher answers 7, 7.0, 8 -> label 7 (7.0 votes with 7); prompt 2: no teacher answer has a number
    # -> no label. r_i = 1 if the student's answer a_i exists and a_i == label under the checker, else 0.
    teacher_texts = ["so 7", "it is 7.0", "8", "none", "no idea", "nothing"]
    trainer, seen = _fake_trainer(teacher_texts, k=3)
    students = ["7", "8", None, "4", "4", "4"]
    # the label-free fields only, and the student's own vote, which must not be the label
    records = [
        {"index": i // 3 * 2, "pred_flexible": a, "pred_strict": None, "majority_answer": "8" if i < 3 else "4"}
        for i, a in enumerate(students)
    ]
    rewards = CO_REWARD.from_answers(trainer, records)
    assert rewards.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert len(seen) == 1 and torch.equal(seen[0], torch.full((1, 1), -1.0))  # the teacher's weight answered
    assert torch.equal(trainer.model.weight, torch.full((1, 1), 5.0))  # and the student's is back
    assert set(trainer.checker.golds) == {"0"}  # the teacher's answers were read against no gold of the data


def test_a_failed_teacher_generation_puts_the_students_weights_back():
    trainer, _ = _fake_trainer(["7"] * 2, k=2)

    def fail(prompt_ids, prompt_mask):
        raise RuntimeError("out of memory")

    trainer._generate = fail
    records = [{"index": 0, "pred_flexible": "7", "majority_answer": "7"}] * 2
    with pytest.raises(RuntimeError, match="out of memory"):
        CO_REWARD.from_answers(trainer, records)
    assert torch.equal(trainer.model.weight, torch.full((1, 1), 5.0))


# ----------------------------------------------------------------------------------------------------- in the trainer
def test_the_teacher_answers_with_its_weights_and_its_tokens_are_counted(tmp_path, tokenizer, prompts, gold):
    args = make_config(tmp_path, method="co_reward", num_generations=2)
    trainer = ZeroSiamTrainer(make_model(tokenizer), args, prompts, tokenizer, gold=gold)
    torch.manual_seed(1)
    trainer.method_state = {n: torch.randn_like(p) for n, p in trainer.method_state.items()}
    student = lora(trainer)
    generate, seen, made = trainer._generate, [], []

    def spy(prompt_ids, prompt_mask):
        seen.append(lora(trainer))
        made.append(generate(prompt_ids, prompt_mask))
        return made[-1]

    trainer._generate = spy
    records = [{"index": i, "pred_flexible": "7", "majority_answer": "7"} for i in (0, 0, 3, 3)]
    CO_REWARD.from_answers(trainer, records)
    assert all(torch.equal(seen[0][n], trainer.method_state[n]) for n in student)
    assert all(torch.equal(p, student[n]) for n, p in lora(trainer).items())  # bit for bit
    assert trainer.cost["generated_tokens"] == sum(len(ids) for ids in made[0])
    # each prompt once through the prefill, its last token once more for the second sample
    assert trainer.cost["prefill_tokens"] == len(prompts[0]["prompt_ids"]) + len(prompts[3]["prompt_ids"]) + 2


class _ParityChecker(NumericChecker):
    """A toy benchmark whose answer is the parity of the answer's length in bytes: the tiny model's random answers
    have one, half of them agree with the teacher's label, and LoRA moves."""

    def score(self, texts, golds):
        answers = [str(len(text.encode()) % 2) for text in texts]
        wrong = {"correct_strict": False, "correct_flexible": False}
        return [{"pred_strict": a, "pred_flexible": a, **wrong} for a in answers]

    def same_answer(self, a, b):
        return a == b


class _LoraAfterEachStep(TrainerCallback):
    """LoRA after each optimizer step, before the trainer's own step end (the teacher's update) reads it."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})


def test_co_reward_trains_lora_only_and_the_teacher_follows_by_its_ema(tmp_path, tokenizer, prompts, gold):
    model = make_model(tokenizer)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = make_config(tmp_path, method="co_reward", num_generations=3, teacher_rate_start=0.5, teacher_rate_end=0.1)
    spy = _LoraAfterEachStep()
    trainer = ZeroSiamTrainer(model, args, prompts, tokenizer, gold=gold, checker=_ParityChecker(), callbacks=[spy])
    initial = lora(trainer)
    assert all(torch.equal(trainer.method_state[n], p) for n, p in initial.items())  # the teacher starts as LoRA
    trainer.train()
    assert_only_lora_moved(trainer.model, base, initial)
    # after step s (of T = 3): teacher <- (1 - a) teacher + a LoRA_s, a = 0.1 + 0.2 (1 + cos(pi s / 3))
    expected = {n: p.float().clone() for n, p in initial.items()}
    for step, weights in enumerate(spy.steps, start=1):
        rate = 0.1 + 0.5 * (0.5 - 0.1) * (1 + math.cos(math.pi * step / 3))
        for name in expected:
            expected[name] = (1 - rate) * expected[name] + rate * weights[name]
    assert len(spy.steps) == 3
    for name, value in trainer.method_state.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(trainer.method_state[n], p) for n, p in lora(trainer).items())  # it lags behind LoRA
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"reward/mean", "reward/teacher_label_share", "collapse/entropy"} <= logged


def run(tokenizer, tmp_path, settings: dict, prompts, gold) -> ZeroSiamTrainer:
    config = make_config(tmp_path, **settings)
    return ZeroSiamTrainer(make_model(tokenizer), config, prompts, tokenizer, gold=gold, checker=_ParityChecker())


def test_resume_restores_the_teacher_and_ends_like_the_uninterrupted_run(tmp_path, tokenizer, prompts, gold):
    settings = {"method": "co_reward", "save_steps": 1, "save_total_limit": None, "teacher_rate_start": 0.5}
    whole = run(tokenizer, tmp_path, settings, prompts, gold)
    whole.train()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert (checkpoint / METHOD_STATE_FILE).is_file()
    kept = tmp_path / "kept"
    shutil.copytree(checkpoint, kept)
    resumed = run(tokenizer, tmp_path, settings, prompts, gold)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.online_results() == whole.online_results()
    assert all(torch.equal(p, dict(whole.model.named_parameters())[n]) for n, p in resumed.model.named_parameters())
    assert all(torch.equal(value, whole.method_state[n]) for n, value in resumed.method_state.items())
    assert resumed.total_cost() == whole.total_cost()
    (kept / METHOD_STATE_FILE).unlink()
    without = run(tokenizer, tmp_path, settings, prompts, gold)
    with pytest.raises(ValueError, match=f"no {METHOD_STATE_FILE} there"):
        without.train(resume_from_checkpoint=str(kept))


def test_a_reset_starts_the_teacher_afresh_from_the_initial_lora(tmp_path, tokenizer, prompts, gold):
    args = make_config(tmp_path, method="co_reward", collapse_guard=True)
    trainer = ZeroSiamTrainer(make_model(tokenizer), args, prompts, tokenizer, gold=gold)
    initial = lora(trainer)
    trainer.create_optimizer()
    with torch.no_grad():
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.add_(1.0)
    trainer.method_state = {n: value + 2.0 for n, value in trainer.method_state.items()}
    trainer._reset_to_initial()
    assert all(torch.equal(trainer.method_state[n], p.float()) for n, p in initial.items())


# ----------------------------------------------------------------------------------------------------- variant I
def test_variant_one_rewards_each_wording_by_the_other_wordings_vote_by_hand():
    # per prompt: k answers to the question, then k to its paraphrase. r = 1 if the answer exists and agrees with the
    # other wording's majority answer (ties to the first seen, None never wins), else 0.
    logged = []
    args = SimpleNamespace(num_generations=3, co_reward_variant="I")
    trainer = SimpleNamespace(args=args, checker=NumericChecker(), log_metrics_step=logged.append)
    question, paraphrase = ["7", "7.0", "8"], ["8", "8", None]  # votes: 7 and 8
    no_answer, answered = [None, None, None], ["4", "5", "4"]  # votes: none and 4
    answers = question + paraphrase + no_answer + answered
    records = [{"index": i // 6, "pred_flexible": a} for i, a in enumerate(answers)]
    rewards = CO_REWARD.from_answers(trainer, records)
    assert rewards.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0] + [0.0] * 6
    assert logged == [{"reward/views_agree": torch.tensor(0.0)}]


def test_variant_one_asks_the_paraphrase_trains_lora_and_keeps_no_teacher(tmp_path, tokenizer, prompts, gold):
    settings = {"method": "co_reward", "co_reward_variant": "I", "num_generations": 2, "save_steps": 1}
    settings.update(paraphrase_max_new_tokens=8, save_total_limit=None)
    whole = run(tokenizer, tmp_path, settings, prompts, gold)
    initial = lora(whole)
    whole.train()
    assert whole.method_state == {}
    assert not (tmp_path / "run" / "checkpoint-1" / METHOD_STATE_FILE).exists()
    assert any(not torch.equal(initial[n], p) for n, p in lora(whole).items()), "LoRA never moved"
    # the paraphrase request (one greedy answer a question) and the k answers to the paraphrase are counted too
    records = whole.online_results()[1]
    assert whole.total_cost()["generated_tokens"] > 2 * sum(r["tokens"] for r in records)
    assert all("paraphrase" in r for r in records)
    resumed = run(tokenizer, tmp_path, settings, prompts, gold)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    assert resumed.online_results() == whole.online_results()
    assert all(torch.equal(p, dict(whole.model.named_parameters())[n]) for n, p in resumed.model.named_parameters())
    assert resumed.total_cost() == whole.total_cost()
