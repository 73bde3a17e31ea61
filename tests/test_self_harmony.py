"""Self-Harmony and the paraphrase it asks: the harmonic-mean label against its formula written here, the paraphrase
request and its fallback, the batch of 2k rows per prompt (each view a group of k), every token counted, what moves
and what must not, and resuming."""

from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch
from helpers import PROBLEMS, assert_only_lora_moved, make_config, make_model

from zerosiam_hf import ZeroSiamTrainer
from zerosiam_hf import trainer as trainer_module
from zerosiam_hf.checkers import NumericChecker
from zerosiam_hf.methods import METHODS, paraphrase
from zerosiam_hf.methods.base import LABEL_FREE_FIELDS
from zerosiam_hf.methods.paraphrase import PARAPHRASE_INSTRUCTION, fallback_reason, paraphrase_request_ids
from zerosiam_hf.methods.self_harmony import harmonic_label
from zerosiam_hf.tasks import question_prompt_ids


SAME = NumericChecker().same_answer
K = 2  # samples per view in the trainer tests


class Parity(NumericChecker):
    """Extracts the parity of the text's character codes as the answer: the tiny random model's texts hold no number
    shared by both views, and their parities agree often enough to make a label and a reward with signal."""

    def score(self, texts, golds):
        scores = super().score(texts, golds)
        return [{**score, "pred_flexible": str(sum(map(ord, text)) % 2)} for score, text in zip(scores, texts)]


def by_formula(original: list, paraphrased: list) -> str | None:
    """argmax over answers in both views of the harmonic mean 2 p0 p1 / (p0 + p1), p = count / k (no `same` here)."""
    p0 = {a: Fraction(original.count(a), len(original)) for a in original if a is not None}
    p1 = {a: Fraction(paraphrased.count(a), len(paraphrased)) for a in paraphrased if a is not None}
    scores = {a: 2 * p0[a] * p1[a] / (p0[a] + p1[a]) for a in p0 if a in p1}
    return max(scores, key=scores.get) if scores else None


# ------------------------------------------------------------------------------------------------------ the label
@pytest.mark.parametrize(
    ("original", "paraphrased"),
    [
        (["5", "5", "5", "8"], ["8", "8", "8", "1"]),  # the original's majority (5) is never said of the paraphrase
        (["7", "7", "7", "3"], ["3", "3", "7", None]),  # 7: 2(3/4)(1/4)/1 = 3/8 beats 3: 2(1/4)(1/2)/(3/4) = 1/3
        (["2", "2", "4", "4"], ["4", "9", "9", "9"]),
        (["1", "2", None, None], ["3", "4", None, None]),  # no answer in both views: no label
    ],
)
def test_the_label_maximises_the_harmonic_mean_of_the_two_frequencies(original, paraphrased):
    assert harmonic_label(original, paraphrased, SAME) == by_formula(original, paraphrased)


def test_equal_answers_count_together_and_ties_go_to_the_larger_count_then_the_first_seen():
    # 1/2 (n0 = 2, n1 = 2) scores 2*2/4 = 1 against 3's 1*1/2; counted apart, 0.5, 1/2 and 2/4 are in one view each
    assert harmonic_label(["0.5", "1/2", "3", None], ["2/4", "2/4", "3", None], SAME) == "0.5"
    # 3: 3*6/9 = 2 from 9 answers, 4: 4*4/8 = 2 from 8: the larger count, though 4 comes first
    assert harmonic_label(["4"] * 4 + ["3"] * 3 + [None] * 3, ["3"] * 6 + ["4"] * 4, SAME) == "3"
    # 1: 1*2/3 and 2: 2*1/3 from 3 answers each: the first seen
    assert harmonic_label(["1", "2", "2", "0"], ["1", "1", "2", "0"], SAME) == "1"


def test_each_view_is_rewarded_by_agreement_with_the_label_from_the_answers_alone():
    logged = []
    trainer = SimpleNamespace(
        checker=NumericChecker(), args=SimpleNamespace(num_generations=4), log_metrics_step=logged.append
    )
    own = ["5", "5", "5", "8"]  # majority 5
    other = ["8", "8.0", None, "1"]  # 8: n0 = 1, n1 = 2, the only answer in both views
    records = [{"pred_flexible": a, "majority_answer": "5"} for a in own] + [{"pred_flexible": a} for a in other]
    no_shared = [{"pred_flexible": a, "majority_answer": "1"} for a in ["1", "1", "2", "2"]]
    no_shared += [{"pred_flexible": a} for a in ["3", None, "4", "4"]]
    rewards = METHODS["self_harmony"].from_answers(trainer, records + no_shared)
    assert rewards.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0] + [0.0] * 8
    assert logged[0]["self_harmony/no_label"] == 0.5 and logged[0]["self_harmony/label_not_majority"] == 0.5


# ------------------------------------------------------------------------------------------------ the paraphrase
def test_the_paraphrase_request_is_the_question_then_the_instruction_in_the_chat_template(tokenizer):
    question = PROBLEMS[0][0]
    ids = paraphrase_request_ids(tokenizer, question, max_prompt_length=512)
    assert tokenizer.decode(ids) == f"<|user|>{question}\n\n{PARAPHRASE_INSTRUCTION}<|end|><|assistant|>"
    assert paraphrase_request_ids(tokenizer, question, max_prompt_length=20) == ids[-20:]  # cut from the left


def test_a_paraphrase_that_cannot_stand_for_the_question_says_why(tokenizer):
    end = [tokenizer.eos_token_id]
    assert fallback_reason([5, 6, end[0]], "Two boxes of 12 pens: how many pens?", end) is None
    assert fallback_reason([end[0]], "", end) == "empty"
    assert fallback_reason([9, 9, 9, 9, 9], "aaaaa", end) == "loop"
    assert fallback_reason([5, 6, 7], "Two boxes of", end) == "cut"


# ------------------------------------------------------------------------------------------------ in the trainer
def spy_generation(monkeypatch) -> list:
    """Every call of the one generation function by the trainer: (prompt ids, samples, completions)."""
    calls = []
    generate = trainer_module.generate_batches

    def spy(model, batches, config, **kwargs):
        batches = list(batches)
        out = generate(model, batches, config, **kwargs)
        calls.append((batches[0], kwargs["samples"], config.do_sample, out))
        return out

    monkeypatch.setattr(trainer_module, "generate_batches", spy)
    return calls


def test_both_views_are_trained_in_groups_of_k_and_every_token_is_counted(
    tmp_path, tokenizer, prompts, gold, monkeypatch
):
    monkeypatch.setattr(paraphrase, "fallback_reason", lambda ids, text, eos: None)  # a random model's text stands
    calls, batches = spy_generation(monkeypatch), []
    loss = type(METHODS["self_harmony"]).loss
    monkeypatch.setattr(
        type(METHODS["self_harmony"]),
        "loss",
        lambda self, t, m, inputs: batches.append(inputs) or loss(self, t, m, inputs),
    )
    model = make_model(tokenizer)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = make_config(tmp_path, method="self_harmony", num_generations=K, paraphrase_max_new_tokens=6)
    trainer = ZeroSiamTrainer(model, args, prompts, tokenizer, gold=gold, checker=Parity())
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()

    # what moved: LoRA only
    assert_only_lora_moved(trainer.model, base, lora_before)

    # each step: k samples per prompt, one greedy paraphrase per question, k samples per paraphrase
    assert [(samples, sampled) for _, samples, sampled, _ in calls] == [(K, True), (1, False), (K, True)] * 3
    summary, records = trainer.online_results()
    assert summary["n"] == len(PROBLEMS)
    by_prompt = {tuple(row["prompt_ids"]): row["index"] for row in prompts}
    for inputs in batches:  # per prompt: k rows of its own prompt, then k of its paraphrase asked the same way
        ends = inputs["loss_mask"].float().argmax(dim=1).tolist()  # the prompt's last position predicts the answer
        rows = zip(inputs["input_ids"], inputs["attention_mask"], ends)
        asked = [ids[: end + 1][mask[: end + 1].bool()].tolist() for ids, mask, end in rows]
        assert len(asked) == 2 * K * args.per_device_train_batch_size
        for start in range(0, len(asked), 2 * K):
            record = trainer.online_records[by_prompt[tuple(asked[start])]]
            view = question_prompt_ids(tokenizer, record["paraphrase"], "Solve.")
            assert asked[start : start + 2 * K] == [asked[start]] * K + [view] * K
            assert record["paraphrase_fallback"] is None and len(record["view_answers"]) == K

    # every token through the one generation function is counted: prompts once (+ 1 per further sample), answers
    cost = trainer.total_cost()
    assert cost["generated_tokens"] == sum(len(ids) for *_, out in calls for ids in out)
    assert cost["prefill_tokens"] == sum(int(mask.sum()) + (k - 1) * len(mask) for (_, mask), k, *_ in calls)
    requests = sum(len(paraphrase_request_ids(tokenizer, q, 512)) for q, _ in PROBLEMS)
    assert sum(int(mask.sum()) for (_, mask), k, *_ in calls if k == 1) == requests
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"reward/mean", "collapse/entropy", "paraphrase/fallback", "self_harmony/no_label"} <= logged


def test_a_paraphrase_that_cannot_stand_asks_the_question_again_and_says_why(tmp_path, tokenizer, prompts, gold):
    # the random tiny model never ends within 4 tokens: every paraphrase is cut, the original question asked twice
    args = make_config(tmp_path, method="self_harmony", num_generations=K, paraphrase_max_new_tokens=4, max_steps=1)
    trainer = ZeroSiamTrainer(make_model(tokenizer), args, prompts, tokenizer, gold=gold)
    trainer.train()
    _, records = trainer.online_results()
    assert records and all(r["paraphrase_fallback"] == "cut" and r["paraphrase"] for r in records)
    assert [entry["paraphrase/fallback"] for entry in trainer.state.log_history if "paraphrase/fallback" in entry] == [
        1.0
    ]


def test_the_reward_reads_both_views_answers_without_any_gold_based_field(
    tmp_path, tokenizer, prompts, gold, monkeypatch
):
    seen = []
    method = type(METHODS["self_harmony"])
    own = method.from_answers
    monkeypatch.setattr(method, "from_answers", lambda self, t, records: seen.append(records) or own(self, t, records))
    args = make_config(tmp_path, method="self_harmony", num_generations=K, paraphrase_max_new_tokens=4, max_steps=1)
    ZeroSiamTrainer(make_model(tokenizer), args, prompts, tokenizer, gold=gold, checker=Parity()).train()
    (records,) = seen
    assert len(records) == 2 * K * args.per_device_train_batch_size
    assert {key for record in records for key in record} <= set(LABEL_FREE_FIELDS)


def test_resume_from_a_checkpoint_ends_like_the_uninterrupted_run(tmp_path, tokenizer, prompts, gold, monkeypatch):
    monkeypatch.setattr(paraphrase, "fallback_reason", lambda ids, text, eos: None)  # the paraphrases are asked
    settings = {"method": "self_harmony", "num_generations": K, "paraphrase_max_new_tokens": 6}
    settings |= {"save_steps": 1, "save_total_limit": None}
    run = {"gold": gold, "checker": Parity()}
    whole = ZeroSiamTrainer(make_model(tokenizer), make_config(tmp_path, **settings), prompts, tokenizer, **run)
    whole.train()
    resumed = ZeroSiamTrainer(make_model(tokenizer), make_config(tmp_path, **settings), prompts, tokenizer, **run)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    assert resumed.online_results() == whole.online_results()  # sampled answers and paraphrases alike
    assert all(torch.equal(p, dict(whole.model.named_parameters())[n]) for n, p in resumed.model.named_parameters())
    assert resumed.total_cost() == whole.total_cost()
