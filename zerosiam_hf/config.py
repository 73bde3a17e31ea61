"""Configuration of a test-time adaptation run: the method, its signal, its protocol and the LoRA adapters."""

import dataclasses
import math
from dataclasses import dataclass, field, make_dataclass
from typing import Literal

from huggingface_hub import is_offline_mode
from transformers import TrainingArguments
from transformers.integrations import integration_utils as reporting

from .engines import hidden
from .generation import GENERATION_BACKENDS, GenerationArguments, check_backend, check_lengths
from .losses import CHUNK_SIZE
from .methods import METHODS, declared_options, option_defaults
from .records import is_secret


SIGNALS = ("response", "prompt")
PROTOCOLS = ("online", "offline")


def _generation_field(name: str):
    """A generation setting as `GenerationArguments` declares it (default and help): its one home, which the
    answering commands (evaluate, calibrate_synthetic) parse and an adaptation run shares."""
    declared = GenerationArguments.__dataclass_fields__[name]
    return field(default=declared.default, metadata=declared.metadata)


@dataclass
class _MethodSettings(TrainingArguments):
    """The method and what every method reads: its signal, the protocol, the episodic reset."""

    method: Literal[tuple(METHODS)] = field(
        default="zerosiam",
        metadata={"help": "Test-time method: " + "; ".join(f"{m.name}: {m.help}" for m in METHODS.values()) + "."},
    )
    signal: Literal[SIGNALS] | None = field(
        default=None,
        metadata={
            "help": "Positions that carry the loss: the model's own answer (teacher-forced), or the prompt's "
            "next-token distributions. Default: the method's own (response; tlm: prompt)."
        },
    )
    protocol: Literal[PROTOCOLS] = field(
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


def _option_field(name: str, takers: list) -> tuple:
    """The config's field of one method option: None stands for the method's default, and the help names the
    methods that take it and their defaults."""
    declared = takers[0][1]
    methods = ", ".join(method for method, _ in takers)
    text = f"{methods}: {declared.metadata['help']} ({option_defaults(takers)})."
    return name, declared.type | None, field(default=None, metadata={"help": text})


# Each method's own options (`Method.options_class`, declared in its module) as fields of the config, which the
# command line, --config and --help read; a method given another method's option refuses it.
METHOD_OPTIONS = declared_options(METHODS.values())
_MethodOptions = make_dataclass(
    "_MethodOptions",
    [_option_field(name, takers) for name, takers in METHOD_OPTIONS.items()],
    bases=(_MethodSettings,),
)
_MethodOptions.__module__ = __name__


@dataclass
class ZeroSiamConfig(_MethodOptions):
    """`TrainingArguments` plus the settings of ZeroSiam test-time adaptation.

    The defaults differ from `TrainingArguments` where test-time adaptation needs it: a constant learning rate,
    one pass over the test stream, logging every step, a checkpoint every 50 steps, and the dataset's extra columns
    kept.
    """

    loss_chunk_size: int = field(
        default=CHUNK_SIZE,
        metadata={"help": "Positions per chunk of the memory-bounded loss head; 0 computes it naively (reference)."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = lora_alpha / lora_r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names that receive LoRA adapters; by default every linear layer of the model's attention "
            "blocks (q_proj k_proj v_proj o_proj on Llama, qkv_proj o_proj on Phi-3); all-linear for every linear "
            "layer but the output head."
        },
    )
    max_new_tokens: int = _generation_field("max_new_tokens")
    max_prompt_length: int = _generation_field("max_prompt_length")
    generation_backend: Literal[GENERATION_BACKENDS] = _generation_field("generation_backend")
    generation_batch_size: int | None = field(
        default=None,
        metadata={"help": "Prompts per generate() call; defaults to per_device_train_batch_size."},
    )
    merge_adapter_for_generation: bool = field(
        default=True,
        metadata={
            "help": "Generate through temporary weights with LoRA folded in (faster); the base tensors never change."
        },
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
    # Chosen on the synthetic development set (generator seed 100, docs/results/collapse-guard.md): runs that stayed
    # useful kept every batch above 0.48 nats and at most 1 of 4 answers degenerate; Tent collapsing at lr 2e-3 fell
    # to 0.05 nats and 3 of 4.
    collapse_min_entropy: float = field(
        default=0.1,
        metadata={
            "help": "With --collapse_guard: reset when the clean branch's mean entropy on a batch (nats) is below."
        },
    )
    collapse_max_degenerate: float = field(
        default=0.5,
        metadata={
            "help": "With --collapse_guard: reset when the share of the recent answers that are degenerate is above "
            "(the recent answers: see collapse_min_answers)."
        },
    )
    # 4: the batch size the thresholds were chosen at, so that runs at 4 or more read each batch alone as they did;
    # at batch size 1 a single degenerate answer would otherwise be a share of 1 (docs/results/
    # scenario-batch1-synthetic.md: it flagged none in every seed).
    collapse_min_answers: int = field(
        default=4,
        metadata={
            "help": "With --collapse_guard: the degenerate share is read over the fewest last steps that hold at "
            "least this many answers, counted from the run's start or its last reset (a batch this large alone)."
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
    restore_callback_states_from_checkpoint: bool = field(
        default=True,
        metadata={
            "help": "A resumed run restores the callbacks' state: the guards' counters travel with a checkpoint."
        },
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={
            "help": "DDP's find_unused_parameters. False: the predictor is used after the model's forward, in the "
            "loss, so DDP's unused-parameter search would mark it ready twice and fail."
        },
    )

    def __post_init__(self):
        if self.deepspeed and hidden("deepspeed"):  # transformers decided at import that DeepSpeed is absent
            raise ValueError(
                "deepspeed given in a --config file: a command loads DeepSpeed only for a DeepSpeed launch; pass "
                "--deepspeed on the command line, or launch with an accelerate DeepSpeed config "
                "(configs/accelerate/deepspeed_zero2.yaml)."
            )
        super().__post_init__()
        _check_choice("method", self.method, tuple(METHODS))
        _check_choice("protocol", self.protocol, PROTOCOLS)
        check_backend(self.generation_backend)
        self._resolve_method_options()
        for name in ("learning_rate", "lora_dropout"):
            value = getattr(self, name)
            # `nan < 0` is False: a NaN rate would pass a sign check and poison every update.
            if not math.isfinite(value):
                raise ValueError(f"--{name} must be a finite number, got {value}.")
            if value < 0:
                raise ValueError(f"--{name} must be >= 0, got {value}.")
        if not (math.isfinite(self.collapse_min_entropy) and self.collapse_min_entropy >= 0):
            raise ValueError(f"--collapse_min_entropy must be a finite number >= 0, got {self.collapse_min_entropy}.")
        if not 0 <= self.collapse_max_degenerate <= 1:
            raise ValueError(f"--collapse_max_degenerate must be in [0, 1], got {self.collapse_max_degenerate}.")
        if self.lora_dropout >= 1:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        counts = ("lora_r", "lora_alpha", "per_device_train_batch_size", "max_skipped_updates", "collapse_min_answers")
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be a positive integer, got {getattr(self, name)}.")
        check_lengths(self.max_prompt_length, self.max_new_tokens)
        if self.loss_chunk_size < 0:
            raise ValueError(f"--loss_chunk_size must be >= 0 (0 = naive), got {self.loss_chunk_size}.")
        if self.generation_batch_size is not None and self.generation_batch_size < 1:
            raise ValueError(f"--generation_batch_size must be a positive integer, got {self.generation_batch_size}.")
        _check_trainer_numbers(self)
        if self.fsdp and self.use_cpu:
            raise ValueError(
                "--fsdp with --use_cpu true runs plain DDP, a full copy of the model per process (accelerate shards "
                "nothing on a CPU); shard with transformers' FSDP2 instead: drop --fsdp and pass --fsdp_size N under "
                "`torchrun --nproc_per_node N` (in Python: from_pretrained(..., "
                "distributed_config=DistributedConfig(fsdp_size=N)))."
            )
        if self.episodic and self.gradient_accumulation_steps != 1:
            raise ValueError("--episodic resets after every batch; use --gradient_accumulation_steps 1.")
        if self.protocol == "online" and self.num_train_epochs != 1 and self.max_steps <= 0:
            raise ValueError(
                "--protocol online answers the test stream once; use --num_train_epochs 1, "
                f"got {self.num_train_epochs}."
            )
        if self.push_to_hub and is_offline_mode():  # the Trainer would fail creating the repo, or after the run
            raise ValueError(
                "--push_to_hub true: the hub is offline (HF_HUB_OFFLINE), so the run could not be pushed; drop the "
                "flag, or push the finished output folder once online (`hf upload <repo id> <output_dir>`)."
            )
        _check_report_to(self.report_to)

    def __getstate__(self) -> dict:
        # A pickled copy carries no token: the Trainer saves its arguments with torch.save (training_args.bin, in
        # every checkpoint and output folder, and pushed with them); this live object keeps it for a push.
        return {name: None if is_secret(name) else value for name, value in self.__dict__.items()}

    def _resolve_method_options(self) -> None:
        """Refuse the options the method does not take, then fill in its defaults for those left unset."""
        method = METHODS[self.method]
        foreign = [name for name in METHOD_OPTIONS if getattr(self, name) is not None and name not in method.options]
        if foreign:
            takes = ", ".join(f"--{name}" for name in method.options) or "none"
            raise ValueError(
                f"--{foreign[0]} is not an option of --method {self.method} (its own options: {takes}); drop it."
            )
        for name, default in method.options.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        method.options_class(**{name: getattr(self, name) for name in method.options})  # its own checks
        if self.signal is None:
            self.signal = method.signals[0] if method.signals else None
        elif self.signal not in method.signals:
            takes = ", ".join(method.signals) or "none (it trains nothing)"
            raise ValueError(f"--method {self.method} takes --signal {takes}; got --signal {self.signal}.")
        if method.samples and self.num_generations < 2:
            raise ValueError(f"--method {self.method} compares k answers per prompt: --num_generations must be >= 2.")
        if method.online_only and self.protocol != "online":
            raise ValueError(f"--method {self.method} runs under --protocol online only; got {self.protocol}.")
        if method.online_only and method.samples and self.episodic:
            raise ValueError(
                f"--method {self.method} rewards a batch's answers as they are scored, before its update, and "
                "--episodic answers a batch after its update: drop --episodic."
            )
        _check_backend_fits(self.method, self.generation_backend)

    def for_method(self, method: str, **changes) -> "ZeroSiamConfig":
        """The same settings for a run of `method`: the method options it does not take are dropped, those it takes
        kept, and its defaults fill the rest (a comparison runs every method from one set of flags)."""
        spec = METHODS[method]
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(ZeroSiamConfig) if f.init}
        values.update({name: None for name in METHOD_OPTIONS if name not in spec.options})
        if values["signal"] not in spec.signals:
            values["signal"] = None
        return ZeroSiamConfig(**{**values, "method": method, **changes})

    @property
    def method_spec(self):
        """The registered `Method` behind `method`."""
        return METHODS[self.method]

    @property
    def updates_weights(self) -> bool:
        """Whether this run takes optimizer steps (`Method.updates_weights`; `Method.trains` says what it trains)."""
        return METHODS[self.method].updates_weights


def _check_trainer_numbers(args: TrainingArguments) -> None:
    """Refuse a TrainingArguments number a run cannot use, in one line naming its flag."""
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
        # numpy's generator, which set_seed seeds, takes these only; its own error names no flag
        ("seed", lambda v: 0 <= v < 2**32, "an integer in [0, 2**32 - 1]"),
        ("data_seed", lambda v: v is None or 0 <= v < 2**32, "an integer in [0, 2**32 - 1]"),
    ):
        value = getattr(args, name)
        if not ((value is None or math.isfinite(value)) and valid(value)):
            raise ValueError(f"--{name} must be {wanted}, got {value}.")
    if args.max_steps != -1 and args.max_steps < 1:
        raise ValueError(
            f"--max_steps must be a positive integer, or -1 for --num_train_epochs passes; got {args.max_steps}."
        )


def _check_backend_fits(method: str, backend: str) -> None:
    """Refuse the continuous backend for a method whose answers it cannot make (`Method.needs_static_generation`)."""
    reason = METHODS[method].needs_static_generation
    if backend == "continuous" and reason:
        raise ValueError(
            f"--method {method} {reason}; --generation_backend continuous makes plain greedy answers only: use "
            "--generation_backend static."
        )


def _check_report_to(report_to: list[str]) -> None:
    """Refuse a --report_to integration that transformers cannot use here; its Trainer would raise it after the model
    loaded, as a traceback."""
    usable = set(reporting.get_available_reporting_integrations())
    # That list leaves out flyte (found otherwise), and azure_ml wherever mlflow is installed.
    usable |= {"flyte"} | ({"azure_ml"} if reporting.is_azureml_available() else set())
    for name in report_to:
        if name in reporting.INTEGRATION_TO_CALLBACK and name not in usable:
            package = "azureml-core" if name == "azure_ml" else name.replace("_", "-")
            others = ", ".join(["none", *sorted(usable - {"flyte", name})])
            raise ValueError(
                f"--report_to {name} needs the package {package}, which is not installed or not usable here: "
                f"pip install {package}, or pass another --report_to ({others})."
            )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"--{name} must be one of {', '.join(choices)}; got {value!r}.")


@dataclass
class SharedRunConfig(ZeroSiamConfig):
    """The settings of several runs that differ only in their method (compare.py): the method options stay as given,
    and each run takes those of its method (`for_method`)."""

    def _resolve_method_options(self) -> None:
        """Check each option given against every method that takes it; the runs fill in their defaults."""
        for name, takers in METHOD_OPTIONS.items():
            if getattr(self, name) is None:
                continue
            for method, _ in takers:
                METHODS[method].options_class(**{name: getattr(self, name)})

    def check_methods(self, methods: list[str]) -> None:
        """Refuse a method option that none of `methods` takes."""
        for name in METHOD_OPTIONS:
            if getattr(self, name) is not None and not any(name in METHODS[m].options for m in methods):
                raise ValueError(f"--{name} is an option of none of --methods {' '.join(methods)}; drop it.")
        for method in methods:
            _check_backend_fits(method, self.generation_backend)
