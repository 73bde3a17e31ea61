"""Configuration of a test-time adaptation run: the method, its signal, its protocol and the LoRA adapters."""

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments


METHODS = ("zerosiam", "tent", "come", "none")
SIGNALS = ("response", "prompt")
PROTOCOLS = ("online", "offline")
ABLATIONS = ("none", "no_stop_gradient", "frozen_identity_predictor", "frozen_random_predictor")


@dataclass
class ZeroSiamConfig(TrainingArguments):
    """`TrainingArguments` plus the settings of ZeroSiam test-time adaptation.

    The defaults differ from `TrainingArguments` where test-time adaptation needs it: a constant learning rate,
    one pass over the test stream, logging every step, a checkpoint every 50 steps, and the dataset's extra columns
    kept.
    """

    method: str = field(
        default="zerosiam",
        metadata={"help": f"Adaptation loss, one of {METHODS}. `none` runs the same pipeline with no update."},
    )
    alpha: float = field(
        default=1.0, metadata={"help": "Weight of the symmetric KL between the online and the target branch."}
    )
    signal: str = field(
        default="response",
        metadata={
            "help": f"Positions that carry the loss, one of {SIGNALS}: the model's own greedy answer (teacher-forced) "
            "or the prompt's next-token distributions."
        },
    )
    protocol: str = field(
        default="online",
        metadata={
            "help": f"One of {PROTOCOLS}. online: each batch is answered, scored, then used for one update. "
            "offline: adapt on the unlabeled prompts, save the adapter, evaluate it as a separate run."
        },
    )
    episodic: bool = field(
        default=False,
        metadata={
            "help": "Reset LoRA, predictor and optimizer state after every batch. With the online protocol each batch "
            "is then adapted on first and answered after its update, since answer-first would never see an update."
        },
    )
    # 1x, not the larger scales of the authors' vision code: Adam moves every entry of the d x d predictor by about
    # its learning rate per step, and at 10x the first step alone pulls the branches tens of nats apart (README).
    predictor_lr_scale: float = field(
        default=1.0, metadata={"help": "The predictor learns at learning_rate * predictor_lr_scale."}
    )
    ablation: str = field(
        default="none",
        metadata={
            "help": f"ZeroSiam ablation, one of {ABLATIONS}: gradient through the target branch, or a predictor that "
            "is frozen at the identity or at a random matrix."
        },
    )
    loss_chunk_size: int = field(
        default=1024,
        metadata={"help": "Positions per chunk of the memory-bounded loss head; 0 computes it naively (reference)."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = lora_alpha / lora_r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "Module names that receive LoRA adapters."},
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Tokens generated per answer."})
    max_prompt_length: int = field(
        default=512, metadata={"help": "Prompts longer than this many tokens are cut from the left."}
    )
    generation_batch_size: int | None = field(
        default=None,
        metadata={"help": "Prompts per generate() call; defaults to per_device_train_batch_size."},
    )
    merge_adapter_for_generation: bool = field(
        default=True,
        metadata={"help": "Merge LoRA into the base weights while generating (faster), unmerging before the update."},
    )
    max_skipped_updates: int = field(
        default=5,
        metadata={
            "help": "An update whose loss or gradient holds NaN or Inf is skipped (weights and optimizer state "
            "unchanged) and counted as guard/skipped_updates; after this many in a row the run stops."
        },
    )
    collapse_guard: bool = field(
        default=False,
        metadata={
            "help": "Reset LoRA, predictor and optimizer to their initial state after a batch that shows collapse "
            "(see collapse_min_entropy, collapse_max_degenerate); counted as guard/resets."
        },
    )
    # Chosen on the synthetic development set (generator seed 100, README): runs that stayed useful kept every batch
    # above 0.48 nats and at most 1 of 4 answers degenerate; Tent collapsing at lr 2e-3 fell to 0.05 nats and 3 of 4.
    collapse_min_entropy: float = field(
        default=0.1,
        metadata={
            "help": "With --collapse_guard: reset when the clean branch's mean entropy on a batch (nats) is below."
        },
    )
    collapse_max_degenerate: float = field(
        default=0.5,
        metadata={
            "help": "With --collapse_guard: reset when the share of a batch's answers that are degenerate is above."
        },
    )

    # Test-time adaptation defaults that differ from TrainingArguments.
    output_dir: str | None = field(default="outputs/zerosiam", metadata={"help": "Where the run is written."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Learning rate of the LoRA adapters."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the unlabeled test prompts."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Prompts per step and process."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N steps."})
    save_strategy: str = field(
        default="steps",
        metadata={
            "help": "Checkpoints during adaptation, to resume from (--resume_from_checkpoint): every save_steps."
        },
    )
    save_steps: float = field(default=50, metadata={"help": "Steps between checkpoints."})
    save_total_limit: int | None = field(
        default=1, metadata={"help": "Checkpoints kept in the staging folder (the newest); they go when the run ends."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the prompt columns for the loop."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer."})
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={
            "help": "DDP's find_unused_parameters. False: the predictor is used after the model's forward, in the "
            "loss, so DDP's unused-parameter search would mark it ready twice and fail."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        _check_choice("method", self.method, METHODS)
        _check_choice("signal", self.signal, SIGNALS)
        _check_choice("protocol", self.protocol, PROTOCOLS)
        _check_choice("ablation", self.ablation, ABLATIONS)
        if self.ablation != "none" and self.method != "zerosiam":
            raise ValueError(
                f"--ablation {self.ablation} applies to --method zerosiam only, got --method {self.method}."
            )
        for name in ("alpha", "learning_rate", "predictor_lr_scale", "lora_dropout"):
            # `nan < 0` is False: a NaN weight or rate would pass a sign check and poison every update.
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"--{name} must be a finite number, got {getattr(self, name)}.")
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}.")
        if not (math.isfinite(self.collapse_min_entropy) and self.collapse_min_entropy >= 0):
            raise ValueError(f"--collapse_min_entropy must be a finite number >= 0, got {self.collapse_min_entropy}.")
        if not 0 <= self.collapse_max_degenerate <= 1:
            raise ValueError(f"--collapse_max_degenerate must be in [0, 1], got {self.collapse_max_degenerate}.")
        if self.lora_dropout >= 1:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        for name in (
            "lora_r",
            "lora_alpha",
            "max_new_tokens",
            "max_prompt_length",
            "per_device_train_batch_size",
            "max_skipped_updates",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be a positive integer, got {getattr(self, name)}.")
        if self.loss_chunk_size < 0:
            raise ValueError(f"--loss_chunk_size must be >= 0 (0 = naive), got {self.loss_chunk_size}.")
        if self.generation_batch_size is not None and self.generation_batch_size < 1:
            raise ValueError(f"--generation_batch_size must be a positive integer, got {self.generation_batch_size}.")
        # TrainingArguments' own numbers that a run relies on: it checks few of them, some only after the model loads
        # (a ZeroDivisionError for no accumulation), some never (a NaN decay is caught when the adapter is published).
        for name, valid, wanted in (
            ("gradient_accumulation_steps", lambda v: v >= 1, "a positive integer"),
            ("num_train_epochs", lambda v: v > 0, "a finite number > 0"),
            ("weight_decay", lambda v: v >= 0, "a finite number >= 0"),
            ("adam_epsilon", lambda v: v > 0, "a finite number > 0"),
            ("adam_beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("adam_beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("warmup_steps", lambda v: v >= 0, "a finite number >= 0 (steps, or a share of the run below 1)"),
            ("max_grad_norm", lambda v: v >= 0, "a finite number >= 0 (0: no clipping)"),
            ("logging_steps", lambda v: v > 0, "a finite number > 0 (steps, or a share of the run below 1)"),
            ("save_steps", lambda v: v > 0, "a finite number > 0 (steps, or a share of the run below 1)"),
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and valid(value)):
                raise ValueError(f"--{name} must be {wanted}, got {value}.")
        if self.max_steps != -1 and self.max_steps < 1:
            raise ValueError(
                f"--max_steps must be a positive integer, or -1 for --num_train_epochs passes; got {self.max_steps}."
            )
        if self.episodic and self.gradient_accumulation_steps != 1:
            raise ValueError("--episodic resets after every batch; use --gradient_accumulation_steps 1.")
        if self.protocol == "online" and self.num_train_epochs != 1 and self.max_steps <= 0:
            raise ValueError(
                "--protocol online answers the test stream once; use --num_train_epochs 1, "
                f"got {self.num_train_epochs}."
            )

    @property
    def trains(self) -> bool:
        """Whether this run updates any weight."""
        return self.method != "none"


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"--{name} must be one of {', '.join(choices)}; got {value!r}.")
