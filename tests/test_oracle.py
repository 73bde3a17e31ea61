"""The gold-label oracle (gold_grpo) and the wall around it: no other method's reward can read a gold-based field, and
a comparison takes the oracle only when told, marking its rows."""

from types import SimpleNamespace

import pytest
import torch
from helpers import PROBLEMS, assert_only_lora_moved, make_config, make_model

from zerosiam_hf import ZeroSiamTrainer
from zerosiam_hf.checkers import NumericChecker
from zerosiam_hf.commands.compare import CompareArguments
from zerosiam_hf.comparison import _label
from zerosiam_hf.methods import METHODS, markdown_tables
from zerosiam_hf.methods.base import LABEL_FREE_FIELDS, label_free


class EveryOtherRight(NumericChecker):
    """Scores the first, third, ... answer of each call as right, whatever the text: a reward with signal from a model
    that never writes a right answer."""

    def score(self, texts, golds):
        return [{**scored, "correct_flexible": i % 2 == 0} for i, scored in enumerate(super().score(texts, golds))]


def test_gold_grpo_rewards_one_for_an_answer_the_gold_calls_right():
    records = [{"pred_flexible": a, "correct_flexible": c} for a, c in [("7", True), ("8", False), (None, False)]]
    assert METHODS["gold_grpo"].from_answers(SimpleNamespace(), records).tolist() == [1.0, 0.0, 0.0]


def test_label_free_keeps_only_what_the_answer_text_says():
    record = {"index": 3, "completion": "x 7", "tokens": 2, "pred_strict": None, "pred_flexible": "7"}
    gold_based = {"correct_strict": False, "correct_flexible": True, "check_timed_out": False, "maj_at_k": True}
    assert label_free([{**record, **gold_based}]) == [record]


@pytest.mark.parametrize("method", [name for name, method in METHODS.items() if method.samples])
def test_only_the_oracle_reward_sees_a_gold_based_field(tmp_path, tokenizer, prompts, gold, method, monkeypatch):
    seen = []
    own = type(METHODS[method]).from_answers

    def spy(self, trainer, records):
        seen.extend(records)
        return own(self, trainer, records)

    monkeypatch.setattr(type(METHODS[method]), "from_answers", spy)
    args = make_config(tmp_path, method=method, num_generations=2, max_steps=1)
    ZeroSiamTrainer(make_model(tokenizer), args, prompts, tokenizer, gold=gold, checker=EveryOtherRight()).train()
    assert seen
    fields = {key for record in seen for key in record}
    if METHODS[method].reads_gold:
        assert "correct_flexible" in fields
    else:
        assert fields <= set(LABEL_FREE_FIELDS), f"{method} saw {sorted(fields - set(LABEL_FREE_FIELDS))}"


def test_gold_grpo_trains_lora_toward_the_answers_the_gold_calls_right(tmp_path, tokenizer, prompts, gold):
    model = make_model(tokenizer)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = make_config(tmp_path, method="gold_grpo", num_generations=2)
    trainer = ZeroSiamTrainer(model, args, prompts, tokenizer, gold=gold, checker=EveryOtherRight())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert_only_lora_moved(trainer.model, base, before)
    rewards = [entry["reward/mean"] for entry in trainer.state.log_history if "reward/mean" in entry]
    assert rewards == [0.5] * (len(PROBLEMS) // 2)  # one of each prompt's two samples right: the checker's say


def test_a_comparison_takes_the_oracle_only_when_told_and_marks_it():
    with pytest.raises(ValueError, match="--oracle true"):
        CompareArguments(methods=["none", "gold_grpo"])
    assert CompareArguments(methods=["none", "gold_grpo"], oracle=True).oracle
    runs = [{"config": {"ZeroSiamConfig": {"ablation": None}}}]
    assert _label("gold_grpo", runs) == "gold_grpo (oracle)" and _label("ttrl", runs) == "ttrl"
    assert "| gold_grpo (oracle: reads the gold) |" in markdown_tables()


def test_gold_grpo_resumed_from_a_checkpoint_ends_like_the_uninterrupted_run(tmp_path, tokenizer, prompts, gold):
    settings = {"method": "gold_grpo", "num_generations": 2, "save_steps": 1, "save_total_limit": None}

    def trainer():
        args = make_config(tmp_path, **settings)
        return ZeroSiamTrainer(make_model(tokenizer), args, prompts, tokenizer, gold=gold, checker=EveryOtherRight())

    whole = trainer()
    whole.train()
    resumed = trainer()
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    assert resumed.online_results() == whole.online_results()
    lora = dict(whole.model.named_parameters())
    assert all(torch.equal(p, lora[n]) for n, p in resumed.model.named_parameters())
    assert resumed.total_cost() == whole.total_cost()
