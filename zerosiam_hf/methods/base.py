"""What every test-time method declares, and the hooks the trainer calls."""

import math
from contextlib import nullcontext
from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, Literal, NamedTuple, get_args, get_origin

import torch
from torch import nn


def option(default: Any, help: str, *, positive: bool = False) -> Field:
    """A method option: its default and its help, written once (`--help`, the docs' table and the checks read them).
    Every number must be finite and >= 0; `positive` refuses 0 as well."""
    return field(default=default, metadata={"help": help, "positive": positive})


@dataclass
class Options:
    """A method's own options, one `option` field each (a subclass per method), checked when made."""

    def __post_init__(self):
        for declared in fields(self):
            name, value = declared.name, getattr(self, declared.name)
            choices = get_args(declared.type) if get_origin(declared.type) is Literal else ()
            if choices and value not in choices:
                raise ValueError(f"--{name} must be one of {', '.join(choices)}; got {value!r}.")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            # `nan < 0` is False: a NaN weight or rate would pass a sign check and poison every update.
            if not math.isfinite(value):
                raise ValueError(f"--{name} must be a finite number, got {value}.")
            if value < 0:
                raise ValueError(f"--{name} must be >= 0, got {value}.")
            if declared.metadata["positive"] and value <= 0:
                raise ValueError(f"--{name} must be > 0, got {value}.")

    @classmethod
    def redefault(cls, name: str, default: Any) -> Field:
        """The option `name` of these options with another default and the same help and checks: for a method
        that shares another's option (Intuitor's sampling temperature)."""
        return field(default=default, metadata=cls.__dataclass_fields__[name].metadata)


class Method:
    """One test-time method. A subclass declares what the method trains, which tokens carry its signal, how many
    answers it samples per prompt, when it resets and which options it takes; it implements its loss (or its
    decoding hook). Instances hold no state: what a method keeps beside the weights the optimizer trains (an EMA
    teacher) lives on the trainer, made by `initial_state` and updated by `end_step`, so that checkpoints and resets
    cover it for every method alike.

    Hooks: those that build the model and its optimizer run before a trainer exists and take the run's config first
    (`prepare_model`, `adapted_model`, `parameter_groups`); those of a step take the trainer first (`loss`,
    `decoding`, `from_answers`, `initial_state`, `end_step`), which holds the config (`trainer.args`), the LM head and
    the logging.

    Class attributes:
        name: the `--method` value.
        help: one line for `--help` and the docs.
        trains: "lora", "lora+predictor", "delta" (a per-prompt vector, never saved) or "nothing".
        signals: the `--signal` values it takes, its default first; empty when no loss reads the model's tokens.
        resets: "never", or "prompt" when its trained state starts afresh for every prompt (the protocol's
            `--episodic` reset comes on top, for the methods that train weights).
        samples: True when it answers each prompt `--num_generations` times, sampled.
        more_answers: what else it generates for each prompt beside those answers (a paraphrase and its answers, a
            teacher's answers), as the methods table says it; "" when nothing.
        forwards_prompt: True when its decoding hook runs one more backbone forward over each prompt (SLOT).
        online_only: True when it needs the online protocol (it adapts while answering, or votes on scored answers).
        needs_static_generation: why its answers need `--generation_backend static` (what its decoding does beyond
            plain greedy answers, the only ones the continuous backend makes), or "" when they are plain greedy.
        options_class: its own options, an `Options` dataclass declared in its module; `ZeroSiamConfig` gets a field
            for each, and any other method's option given with it is an error.
        reads_gold: True for an oracle that is rewarded by the gold answers (gold_grpo): a ceiling, never a test-time
            method. Every other method's `from_answers` gets the scored answers without any field computed from the
            gold (`LABEL_FREE_FIELDS` only), and a comparison takes an oracle only when told (`--oracle true`).
    """

    name: ClassVar[str]
    help: ClassVar[str]
    trains: ClassVar[str] = "lora"
    signals: ClassVar[tuple[str, ...]] = ("response", "prompt")
    resets: ClassVar[str] = "never"
    samples: ClassVar[bool] = False
    more_answers: ClassVar[str] = ""
    online_only: ClassVar[bool] = False
    forwards_prompt: ClassVar[bool] = False
    needs_static_generation: ClassVar[str] = ""
    options_class: ClassVar[type[Options]] = Options
    reads_gold: ClassVar[bool] = False

    @property
    def options(self) -> dict[str, Any]:
        """Its options' defaults, by name."""
        return {declared.name: declared.default for declared in fields(self.options_class)}

    @property
    def updates_weights(self) -> bool:
        """Whether the trainer takes optimizer steps for it."""
        return self.trains in ("lora", "lora+predictor")

    def prepare_model(self, args, model: nn.Module) -> list[str]:
        """Before LoRA wraps `model`: attach what the method trains beside LoRA, and return those modules' names,
        which peft trains and saves with the adapter (`modules_to_save`). Nothing by default."""
        return []

    def adapted_model(self, args, model: nn.Module) -> None:
        """After LoRA wrapped `model` (a `PeftModel`): set up the modules `prepare_model` attached (an ablation
        freezes them, say). Nothing by default."""

    def parameter_groups(self, args, parameters: list[tuple[str, nn.Parameter]]) -> list[dict]:
        """The optimizer's parameter groups over the trainable `(name, parameter)` pairs: by default one, at the
        run's learning rate and weight decay."""
        return [{"params": [p for _, p in parameters], "weight_decay": args.weight_decay}]

    def loss(self, trainer, model, inputs: dict) -> torch.Tensor:
        """The loss of one batch built by the trainer's `_prepare_inputs`; methods that train nothing have none."""
        raise NotImplementedError(f"--method {self.name} has no training loss.")

    def decoding(self, trainer, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
        """A context for the generation of these prompts' answers and logits processors to apply while decoding:
        `(context manager, list of LogitsProcessor)`. Plain decoding by default.

        `model` is the (unwrapped) model that answers; its options are in `trainer.args`.
        """
        return nullcontext(), []

    def second_view(self, trainer, index: torch.Tensor) -> "SecondView | None":
        """Sampling methods that also answer each prompt in another wording (Self-Harmony's paraphrase): the rows
        `index` of the batch asked that way, which the trainer answers `num_generations` times beside the prompt's own
        answers (`from_answers` then gets each prompt's k own answers followed by its k answers in the second view).
        None by default: one view."""
        return None

    def from_answers(self, trainer, records: list[dict]) -> torch.Tensor | None:
        """Sampling methods: what the reward needs from the answers ([N]: TTRL's vote, RENT's has-an-answer); None
        when the loss's statistics are all it needs. `records` hold the `LABEL_FREE_FIELDS` of each answer, nothing
        computed from the gold, unless the method `reads_gold`."""
        return None

    def initial_state(self, trainer) -> dict[str, torch.Tensor]:
        """The method's own state beside the weights the optimizer trains (Co-rewarding's teacher), made from the
        model as it is when the trainer starts and after each episodic or collapse reset (the trained weights back
        at their initial values then). The trainer keeps it as `trainer.method_state`, saves it in each checkpoint
        and restores it on resume, so methods stay stateless. None by default."""
        return {}

    def end_step(self, trainer) -> None:
        """After each optimizer step, before the episodic and collapse resets: update `trainer.method_state`.
        Nothing by default."""


class SecondView(NamedTuple):
    """A batch's prompts in a second wording (`Method.second_view`)."""

    prompt_ids: torch.Tensor  # [B, T'] left-padded, one per prompt of the batch, in its order
    attention_mask: torch.Tensor  # [B, T']
    notes: list[dict]  # what each prompt's online record adds (the paraphrase), one per prompt


# What an answer's record says without its gold: a label-free method's `from_answers` sees these fields only.
LABEL_FREE_FIELDS = ("index", "completion", "tokens", "pred_strict", "pred_flexible", "majority_answer")


def label_free(records: list[dict]) -> list[dict]:
    """The records with only their `LABEL_FREE_FIELDS`: whether an answer is right, and anything else computed from
    the gold, left out."""
    return [{key: record[key] for key in LABEL_FREE_FIELDS if key in record} for record in records]


def final_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """One backbone forward: the model's outputs (logits at the last position only) and [B, T, d] final hidden
    states, the LM head's input. Positions count real tokens only, as generate() counts them under left padding."""
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_hidden_states=True,
        # the methods compute their own logits, chunk by chunk. An index, not the int 1: the slice [:, -1:] of
        # hidden states that need a gradient sent the head's matmul through a batched product over a copy of its
        # weight per row ([B, d, V]; 0.45 GB and most of a second on a CPU, at batch 8 with the embedded model)
        logits_to_keep=torch.tensor([input_ids.shape[1] - 1], device=input_ids.device),
        use_cache=False,
    )
    return outputs, outputs.hidden_states[-1]
