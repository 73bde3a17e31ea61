"""The reasoning benchmarks known by name: where each one's files are, which fields hold question and gold, how
its answers are checked, the instruction its prompts carry, and how a question and instruction become a prompt."""

from dataclasses import dataclass


NUMERIC_INSTRUCTION = 'Solve the problem step by step, then give the final answer on its own line as "#### <number>".'
# Qwen2.5-Math's chain-of-thought instruction, which the entropy-minimization line of work (one-shot EM, EM-FT,
# TTRL) evaluates with.
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# The instruction of data that is no named benchmark: the one whose answer format the checker's strict score reads.
CHECKER_INSTRUCTIONS = {"numeric": NUMERIC_INSTRUCTION, "math": MATH_INSTRUCTION}


@dataclass(frozen=True)
class Benchmark:
    """A named test set: its local file name, its hub copy (if one is known), its fields and its checker."""

    name: str
    title: str  # as the paper's table heads its column
    question_field: str
    answer_field: str  # holds the gold itself, or a solution whose last \boxed{} is the gold (the checker decides)
    checker: str
    instruction: str
    hub: tuple[str, str | None, str] | None = None  # (id, config, split) of a copy on the Hugging Face hub
    source: str = ""  # where a user without hub access gets the file, for the error that asks for it


BENCHMARKS = {
    b.name: b
    for b in (
        Benchmark(
            "gsm8k", "GSM8K", "question", "answer", "numeric", NUMERIC_INSTRUCTION, hub=("openai/gsm8k", "main", None)
        ),
        Benchmark(
            "math500",
            "Math-500",
            "problem",
            "answer",
            "math",
            MATH_INSTRUCTION,
            hub=("HuggingFaceH4/MATH-500", None, "test"),
        ),
        Benchmark(
            "aime24",
            "AIME24",
            "problem",
            "answer",
            "math",
            MATH_INSTRUCTION,
            hub=("HuggingFaceH4/aime_2024", None, "train"),
        ),
        # Neither set has a copy on the hub from its publishers: the file comes from Qwen2.5-Math's evaluation data.
        Benchmark(
            "college_math",
            "CollegeMath",
            "question",
            "answer",
            "math",
            MATH_INSTRUCTION,
            source="github.com/QwenLM/Qwen2.5-Math, evaluation/data/college_math/test.jsonl",
        ),
        Benchmark(
            "minerva_math",
            "Minerva",
            "problem",
            "solution",
            "math",
            MATH_INSTRUCTION,
            source="github.com/QwenLM/Qwen2.5-Math, evaluation/data/minerva_math/test.jsonl",
        ),
    )
}


# The paper's LLM table (arXiv 2509.23183): online accuracy %, reported there, never measured here.
PAPER_RESULTS = {
    "model": "Llama-3.1-8B-Instruct",
    "rows": {
        "no adaptation": {"math500": 49.20, "college_math": 25.00, "aime24": 3.33, "minerva_math": 20.96},
        "Tent": {"math500": 50.00, "college_math": 24.17, "aime24": 6.67, "minerva_math": 20.59},
        "COME": {"math500": 49.80, "college_math": 25.42, "aime24": 6.67, "minerva_math": 22.74},
        "ZeroSiam": {"math500": 52.60, "college_math": 26.25, "aime24": 13.33, "minerva_math": 22.06},
    },
}


def question_prompt_ids(tokenizer, question: str, instruction: str) -> list[int]:
    """The uncut prompt of one question: the question, a blank line and `instruction` as one user turn of the chat
    template, or as plain text and a newline where the tokenizer has no template."""
    text = f"{question}\n\n{instruction}" if instruction else question
    if tokenizer.chat_template is not None:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    else:
        ids = tokenizer(text + "\n")["input_ids"]
    return list(ids)
