"""The model's own paraphrase of each question, asked as a second view of it (Self-Harmony's Reframer).

One request per question, answered greedily by the model being adapted through the trainer's generation (so every
token it costs is counted); the paraphrase is then templated exactly as the question was (`tasks.question_prompt_ids`
with the run's instruction, cut from the left as `data.build_prompts` cuts). A paraphrase that cannot stand for the
question (empty, cut at the length limit, or ending in a token loop) gives way to the question itself, and the
record says why (`paraphrase_fallback`).
"""

from dataclasses import dataclass

import torch

from ..diagnostics import ends_in_loop
from ..generation import greedy_config, pad
from ..tasks import question_prompt_ids
from .base import Options, SecondView, option


# The Reframer's task (Self-Harmony's create_train_aux.py) without its solving half: reword the problem, keep its
# logic, numbers and answer, copy no long run of its words. In our words; the question comes first, as in every
# prompt here, so that a prompt cut from the left keeps the request.
PARAPHRASE_INSTRUCTION = (
    "Rewrite the problem above in your own words so that it reads differently but asks exactly the same thing: keep "
    "every number, quantity and condition, and the question it ends with. You may tell it as a concrete story, from "
    "the point of view of something in it, or as a puzzle about its rules. Do not copy five or more words in a row "
    "from it, and do not solve it. Reply with the rewritten problem only."
)


@dataclass
class ParaphraseOptions(Options):
    paraphrase_max_new_tokens: int = option(
        256, "most tokens of the model's paraphrase of a question (greedy, one per question)", positive=True
    )


def paraphrase_request_ids(tokenizer, question: str, max_prompt_length: int) -> list[int]:
    """The prompt that asks the model to paraphrase `question`: the question, a blank line and
    `PARAPHRASE_INSTRUCTION` as one user turn of the chat template, cut from the left to `max_prompt_length`."""
    return question_prompt_ids(tokenizer, question, PARAPHRASE_INSTRUCTION)[-max_prompt_length:]


def fallback_reason(ids: list[int], text: str, eos_token_ids: list[int]) -> str | None:
    """Why a generated paraphrase (its token `ids`, decoded `text`) cannot stand for the question, or None:
    "empty" (white space at most), "loop" (it ends in a repeated block of tokens) or "cut" (it stopped at the length
    limit, before any end token)."""
    if not text.strip():
        return "empty"
    if ends_in_loop(ids):
        return "loop"
    if ids[-1] not in eos_token_ids:
        return "cut"
    return None


def batch_questions(rows) -> list[tuple[str, str]]:
    """The `(question, instruction)` behind each of `rows`, prompts made by `data.build_prompts`."""
    if not {"question", "instruction"} <= set(rows.column_names):
        raise ValueError(
            "a paraphrase needs the questions: train_dataset lacks the `question` and `instruction` columns that "
            "data.build_prompts keeps; build it with data.build_prompts."
        )
    return list(zip(rows["question"], rows["instruction"]))


def paraphrase_view(trainer, index: torch.Tensor, max_new_tokens: int) -> SecondView:
    """The batch's questions (rows `index` of `trainer.train_dataset`) paraphrased by the model being adapted, one
    greedy answer of at most `max_new_tokens` tokens each, and asked as the originals were: a `SecondView` whose notes
    hold each `paraphrase` (the text generated) and `paraphrase_fallback` (why the question itself was asked instead,
    or None)."""
    tokenizer, limit = trainer.processing_class, trainer.args.max_prompt_length
    questions = batch_questions(trainer.prompt_rows(index.tolist()))
    requests = [paraphrase_request_ids(tokenizer, question, limit) for question, _ in questions]
    request_ids, request_mask = pad(requests, tokenizer.pad_token_id, side="left", device=index.device)
    config = greedy_config(trainer.accelerator.unwrap_model(trainer.model), tokenizer, max_new_tokens)
    outputs = trainer._generate(request_ids, request_mask, config=config, samples=1)
    prompts, notes = [], []
    for (question, instruction), ids in zip(questions, outputs):
        text = tokenizer.decode(ids, skip_special_tokens=True).strip()
        reason = fallback_reason(ids, text, config.eos_token_id)
        prompts.append(question_prompt_ids(tokenizer, question if reason else text, instruction)[-limit:])
        notes.append({"paraphrase": text, "paraphrase_fallback": reason})
    fallbacks = [note["paraphrase_fallback"] is not None for note in notes]
    trainer.log_metrics_step({"paraphrase/fallback": torch.tensor(fallbacks).float().mean()})
    prompt_ids, prompt_mask = pad(prompts, tokenizer.pad_token_id, side="left", device=index.device)
    return SecondView(prompt_ids, prompt_mask, notes)
