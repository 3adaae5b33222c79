"""``TrainConfig``: every knob of a training run, as nested dataclasses loaded from YAML.

A config file mirrors the dataclasses (sections ``data``, ``model``, ``optim``, ``method``,
``run``); anything not given keeps its default. Overrides are dotted ``key=value`` strings whose
values are parsed as YAML (``optim.lr=0.05``, ``method.params.alpha=0.4``, ``run.amp=none``)::

    cfg = load_config("my.yaml", ["optim.epochs=30", "method.name=mixup"])

Common spellings from other trainers are accepted for a few keys (:data:`ALIASES`): a key that is
not a config key is looked up by its last part, bare or under a section, so ``lr=0.1``,
``learning_rate=0.1`` and ``optim.learning_rate=0.1`` all set ``optim.lr``, ``wd`` sets
``optim.weight_decay``, ``batch_size`` (also under ``optim``) ``data.batch_size``, ``warmup``
``optim.warmup_epochs``, ``smoothing`` ``method.label_smoothing``.

The defaults are the README's default run (``mixlab train`` with no arguments): a small ResNet on
the synthetic shapes with CutMix, a few minutes on two CPU cores. ``configs/default.yaml`` (package
data) spells the same values out as a starting point for your own file.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

__all__ = [
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "MethodConfig",
    "RunConfig",
    "TrainConfig",
    "load_config",
    "apply_overrides",
    "set_value",
    "config_from_dict",
    "config_to_dict",
    "validate_config",
    "config_keys",
    "resolve_key",
    "check_value",
    "ALIASES",
    "TASKS",
]

#: the datasets ``data.download`` can fetch (torchvision's md5-checked archives; CUB's and Tiny-ImageNet's readers)
DOWNLOADABLE = ("cifar10", "cifar100", "cub200", "tiny-imagenet")

#: ``data.augment``, the default training augmentation of same-size images (images of mixed sizes
#: always get RandomResizedCrop + flip, or a resize and centre crop with "none"):
#: "crop-flip" random crop with zero padding of 1/8 of the side + horizontal flip; "crop-flip-reflect"
#: the same with reflected padding (openmixup's CIFAR pipeline); "rrc-flip" RandomResizedCrop (scale
#: 0.08-1, bicubic) to the image's own size + flip (openmixup's Tiny-ImageNet pipeline); "none" nothing
AUGMENTS = ("crop-flip", "crop-flip-reflect", "rrc-flip", "none")

#: other trainers' names of config keys (timm's ``train.py`` flags, PyTorch's and Lightning's
#: argument names), accepted wherever a config key is; see :func:`resolve_key`
ALIASES: dict[str, str] = {
    "lr": "optim.lr", "learning_rate": "optim.lr",
    "wd": "optim.weight_decay", "weight_decay": "optim.weight_decay",
    "momentum": "optim.momentum",
    "epochs": "optim.epochs", "num_epochs": "optim.epochs", "max_epochs": "optim.epochs",
    "warmup": "optim.warmup_epochs", "warmup_epochs": "optim.warmup_epochs",
    "opt": "optim.name", "optimizer": "optim.name",
    "sched": "optim.schedule", "scheduler": "optim.schedule", "schedule": "optim.schedule",
    "clip_grad": "optim.clip_grad", "grad_clip": "optim.clip_grad", "gradient_clip_val": "optim.clip_grad",
    "batch_size": "data.batch_size", "bs": "data.batch_size",
    "workers": "data.num_workers", "num_workers": "data.num_workers",
    "data_dir": "data.root", "data_root": "data.root",
    "smoothing": "method.label_smoothing", "label_smoothing": "method.label_smoothing",
    "model_ema_decay": "model.ema_decay", "ema_decay": "model.ema_decay",
    "seed": "run.seed", "amp": "run.amp", "device": "run.device",
    "task": "data.task",
}

#: what a run trains (``data.task``): the data, the model builder, the method's step and the metric follow it
TASKS = ("classification", "segmentation", "detection")


@dataclass
class DataConfig:
    name: str = "synthetic"  # a key of mixlab.data.DATASETS (dense tasks: of mixlab.data.DENSE_DATASETS[task])
    task: str = "classification"  # "classification", "segmentation" (mIoU) or "detection" (mAP); `task:` at top level too
    root: str | None = None  # directory or .zip (imagefolder), CIFAR directory
    download: bool = False  # DOWNLOADABLE datasets: fetch the official archive (md5-checked) into root if missing
    batch_size: int = 128
    eval_batch_size: int = 256
    num_workers: int = 2
    augment: str = "crop-flip"  # one of AUGMENTS: "crop-flip" (random crop, zero padding, + h-flip), "none", ...
    train_per_class: int | None = None  # class-balanced subset of the train split
    num_per_class: int = 400  # synthetic only: train images per class
    test_per_class: int = 100  # synthetic only: test images per class
    image_size: int = 32  # synthetic: rendered size; folders of mixed-size images: crop size
    # the method's augmentation batched on the training device (the loader only decodes and collates
    # uint8 images); null = true on CUDA when the method's transform has a batched twin, false on CPU
    device_augment: bool | None = None
    objects: int = 1  # synthetic: the most shapes per image (1..8; detection: several, e.g. 3)


@dataclass
class ModelConfig:
    name: str = "resnet_small"  # a key of mixlab.models.MODELS, or "timm:<name>"
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra arguments of create_model
    ema_decay: float = 0.0  # > 0 keeps an EMA of the weights (evaluated too); 0 disables
    init: str | None = None  # checkpoint or run directory: start from its model weights, classifier excepted


@dataclass
class OptimConfig:
    name: str = "adamw"  # "sgd" or "adamw"
    lr: float = 3e-3
    momentum: float = 0.9  # SGD
    nesterov: bool = True  # SGD
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    weight_decay: float = 0.05  # not applied to 1-D parameters (biases, norms)
    epochs: int = 25
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # "cosine", "step" or "constant", per step after the warm-up
    min_lr: float = 0.0  # cosine: final lr
    milestones: list[int] = field(default_factory=list)  # step: epochs where lr *= gamma
    gamma: float = 0.1  # step
    clip_grad: float = 0.0  # max gradient norm; 0 disables
    head_lr_scale: float = 1.0  # the classifier's lr as a multiple of optim.lr (fine-tuning: e.g. 20)


@dataclass
class MethodConfig:
    name: str = "cutmix"  # a key of mixlab.registry.METHODS
    label_smoothing: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)  # overrides of the method's defaults


@dataclass
class RunConfig:
    seed: int = 0
    out: str | None = None  # run directory; default runs/<method>-<model>-<dataset>-<time>
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1"
    amp: str = "auto"  # "auto" (bf16 on GPU), "bf16", "fp16" or "none"; always off on CPU
    channels_last: bool = True  # NHWC model and batches (faster on GPU, and on CPU with oneDNN)
    compile: bool = False  # torch.compile the training step (the method's training_step with the model inside)
    sync_bn: bool = False  # SyncBatchNorm under data parallel (GPUs): BatchNorm statistics of the whole batch
    threads: int = 0  # torch CPU threads; 0 = every core (under torchrun: cores / local processes)
    progress: bool = True  # tqdm bar over each epoch's batches
    tensorboard: bool = True  # also log to TensorBoard when it is installed
    resume: str | None = None  # checkpoint file or run directory to continue
    stop_epoch: int | None = None  # stop after this many epochs (the schedule still spans optim.epochs)
    eval_every: int = 1  # test-set pass every k epochs (and always after the last one)
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps, mid-epoch (0: at epoch ends only)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ---------------------------------------------------------------------------------- loading
def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), e.g. to save as YAML or in a checkpoint."""
    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def config_keys() -> list[str]:
    """Every dotted key a config accepts (``data.batch_size``, ...)."""
    return [f"{name}.{f.name}" for name, tp in _section_types().items() for f in dataclasses.fields(tp)]


def _section_types() -> dict[str, type]:
    """``{"data": DataConfig, ...}``."""
    return typing.get_type_hints(TrainConfig)


def resolve_key(key: str) -> str | None:
    """The config key that ``key`` names: ``key`` itself if it is one, else the key of its last part
    in :data:`ALIASES` when ``key`` is that part bare or under a section (``learning_rate``,
    ``optim.learning_rate`` -> ``optim.lr``); ``None`` otherwise. Keys inside a mapping field
    (``method.params.alpha``) are not listed and give ``None``."""
    if key in config_keys():
        return key
    parts = key.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[0] in _section_types()):
        return ALIASES.get(parts[-1])
    return None


def _suggest(key: str) -> str:
    """' (did you mean 'optim.lr'?)' for a mistyped dotted key, or ''."""
    keys = config_keys()
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf] or ([ALIASES[leaf]] if leaf in ALIASES else [])
    leaves = {**ALIASES, **{k.rsplit(".", 1)[-1]: k for k in keys}}  # 'epoch' ~ 'epochs', 'learningrate' ~ ...
    close = (same_leaf or [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.7)]
             or difflib.get_close_matches(key, keys, n=1, cutoff=0.6))
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_key(key: str) -> ValueError:
    section = key.split(".", 1)[0]
    valid = [k for k in config_keys() if k.startswith(section + ".")] or list(_section_types())
    return ValueError(f"unknown config key {key!r}{_suggest(key)}; valid: {', '.join(valid)}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the field type ``tp`` (ints accepted for floats, lists for tuples)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # --set run.out=2024
            value = str(value)
        if isinstance(value, str):
            return value
        raise ValueError(f"{key} must be a string, got {value!r}")
    if origin in (dict,):
        if isinstance(value, dict):
            return dict(value)
        raise ValueError(f"{key} must be a mapping (key: value), got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {value!r}")
        if origin is tuple and len(value) != len(args):
            raise ValueError(f"{key} must be a list of {len(args)} numbers, got {value!r}")
        elem = args[0] if args else Any
        out = [v if elem is Any else _coerce(f"{key}[{i}]", v, elem) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    return value


def _set(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set dotted ``key`` (``section.field``, ``section.dictfield.name`` or an alias) to ``value``."""
    parts = key.split(".")
    sections = _section_types()
    if not (len(parts) >= 2 and parts[0] in sections and parts[1] in typing.get_type_hints(sections[parts[0]])):
        alias = resolve_key(key)
        if alias is None:
            raise _unknown_key(key)
        key, parts = alias, alias.split(".")
    section = getattr(cfg, parts[0])
    tp = typing.get_type_hints(type(section))[parts[1]]
    if len(parts) == 2:
        setattr(section, parts[1], _coerce(key, value, tp))
    elif typing.get_origin(tp) is dict:  # method.params.alpha=0.4
        target = getattr(section, parts[1])
        for p in parts[2:-1]:
            target = target.setdefault(p, {})
        target[parts[-1]] = value
    else:
        raise _unknown_key(key)


def config_from_dict(d: dict[str, Any], base: TrainConfig | None = None, source: str = "config") -> TrainConfig:
    """Build a config from a nested dict, on top of ``base`` (default: the defaults).

    Raises:
        ValueError: unknown section or key (with the nearest valid key), or a value of the wrong type.
    """
    cfg = copy.deepcopy(base) if base is not None else TrainConfig()
    if d is None:
        return cfg
    if not isinstance(d, dict):
        raise ValueError(f"{source} must be a mapping of sections (data, model, optim, method, run), "
                         f"got {type(d).__name__}")
    for section, values in d.items():
        if section not in _section_types() and resolve_key(str(section)) is not None \
                and not isinstance(values, dict):  # a top-level alias: `task: segmentation`
            _set(cfg, str(section), values)
            continue
        if section not in _section_types():
            raise _unknown_key(str(section))
        if not isinstance(values, (dict, type(None))):
            raise ValueError(f"{source}: section {section!r} must be a mapping, got {values!r}")
        for k, v in (values or {}).items():
            _set(cfg, f"{section}.{k}", v)
    return cfg


def apply_overrides(cfg: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """Apply ``key=value`` strings in order; values are parsed with ``yaml.safe_load``.

    Raises:
        ValueError: a string without ``=``, an unknown key (with a suggestion) or a bad value.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override must look like key=value (e.g. optim.lr=0.05), got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ValueError(f"cannot parse the value of {key.strip()!r}: {raw!r} ({e})") from None
        _set(cfg, key.strip(), value)
    return cfg


def set_value(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set dotted ``key`` to an already-typed ``value`` (type-checked like a YAML value).

    Raises:
        ValueError: unknown key (with the nearest valid one) or a value of the wrong type.
    """
    _set(cfg, key, value)


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: TrainConfig | None = None,
    values: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults (or ``base``) <- YAML file <- ``key=value`` overrides <- ``values`` (dotted key ->
    typed value, e.g. from CLI flags), then :func:`validate_config`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown keys, unparsable YAML or invalid values.
    """
    cfg = copy.deepcopy(base) if base is not None else TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            d = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"cannot parse config file {path}: {e}") from None
        cfg = config_from_dict(d, cfg, source=str(path))
    cfg = apply_overrides(cfg, overrides)
    for key, value in (values or {}).items():
        _set(cfg, key, value)
    validate_config(cfg)
    return cfg


# ------------------------------------------------------------------------------- validation
def check_value(ok: bool, key: str, accepted: str, value: Any) -> None:
    """``ValueError("<key> must be <accepted>, got <value>")`` unless ``ok``: how every argument and
    config value of the engine is checked."""
    if not ok:
        raise ValueError(f"{key} must be {accepted}, got {value!r}")


def validate_config(cfg: TrainConfig) -> None:
    """Check every number and choice, naming the key and the accepted range. Names of methods,
    models and datasets are checked by :mod:`mixlab.registry` when they are built.

    Raises:
        ValueError: the first invalid value.
    """
    d, o, m, r = cfg.data, cfg.optim, cfg.method, cfg.run
    finite = lambda x: isinstance(x, (int, float)) and math.isfinite(x)  # noqa: E731
    check_value(d.batch_size >= 2, "data.batch_size", "an integer >= 2 (mixing pairs images)", d.batch_size)
    check_value(d.eval_batch_size >= 1, "data.eval_batch_size", "an integer >= 1", d.eval_batch_size)
    check_value(d.num_workers >= 0, "data.num_workers", "an integer >= 0", d.num_workers)
    check_value(d.augment in AUGMENTS, "data.augment", "one of " + ", ".join(map(repr, AUGMENTS)), d.augment)
    check_value(d.train_per_class is None or d.train_per_class >= 1, "data.train_per_class", "null or an integer >= 1",
           d.train_per_class)
    check_value(d.num_per_class >= 1, "data.num_per_class", "an integer >= 1", d.num_per_class)
    check_value(d.test_per_class >= 1, "data.test_per_class", "an integer >= 1", d.test_per_class)
    check_value(d.image_size >= 8, "data.image_size", "an integer >= 8", d.image_size)
    check_value(d.device_augment is None or isinstance(d.device_augment, bool), "data.device_augment",
                "true, false or null (auto: true on CUDA)", d.device_augment)
    check_value(d.task in TASKS, "data.task", " or ".join(map(repr, TASKS)), d.task)
    check_value(1 <= d.objects <= 8, "data.objects", "an integer in [1, 8] (synthetic: the most shapes per image)",
                d.objects)
    check_value(not d.download or d.name in DOWNLOADABLE, "data.download",
                f"false for dataset {d.name!r} (only {', '.join(DOWNLOADABLE)} download themselves)", d.download)
    check_value(0.0 <= cfg.model.ema_decay < 1.0, "model.ema_decay", "in [0, 1) (0 disables the EMA)",
                cfg.model.ema_decay)
    check_value(cfg.model.init is None or bool(str(cfg.model.init).strip()), "model.init",
           "null or the path of a checkpoint or run directory", cfg.model.init)
    check_value(o.name in ("sgd", "adamw"), "optim.name", "'sgd' or 'adamw'", o.name)
    check_value(finite(o.lr) and o.lr > 0, "optim.lr", "a number > 0", o.lr)
    check_value(0.0 <= o.momentum < 1.0, "optim.momentum", "in [0, 1)", o.momentum)
    check_value(all(0.0 <= b < 1.0 for b in o.betas), "optim.betas", "two numbers in [0, 1)", o.betas)
    check_value(finite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", "a number >= 0", o.weight_decay)
    check_value(o.epochs >= 1, "optim.epochs", "an integer >= 1", o.epochs)
    check_value(finite(o.warmup_epochs) and 0 <= o.warmup_epochs <= o.epochs, "optim.warmup_epochs",
           f"a number in [0, optim.epochs={o.epochs}]", o.warmup_epochs)
    check_value(finite(o.head_lr_scale) and o.head_lr_scale > 0, "optim.head_lr_scale", "a number > 0", o.head_lr_scale)
    check_value(o.schedule in ("cosine", "step", "constant"), "optim.schedule", "'cosine', 'step' or 'constant'",
                o.schedule)
    check_value(finite(o.min_lr) and 0 <= o.min_lr <= o.lr, "optim.min_lr", f"a number in [0, optim.lr={o.lr}]",
                o.min_lr)
    check_value(all(0 < e <= o.epochs for e in o.milestones), "optim.milestones", f"epochs in (0, {o.epochs}]",
                o.milestones)
    check_value(finite(o.gamma) and 0 < o.gamma <= 1, "optim.gamma", "in (0, 1]", o.gamma)
    check_value(finite(o.clip_grad) and o.clip_grad >= 0, "optim.clip_grad", "a number >= 0 (0 disables clipping)",
           o.clip_grad)
    check_value(0.0 <= m.label_smoothing < 1.0, "method.label_smoothing", "in [0, 1)", m.label_smoothing)
    check_value(r.seed >= 0, "run.seed", "an integer >= 0", r.seed)
    check_value(r.threads >= 0, "run.threads", "an integer >= 0 (0 = auto)", r.threads)
    check_value(r.amp in ("auto", "bf16", "fp16", "none"), "run.amp", "'auto', 'bf16', 'fp16' or 'none'", r.amp)
    check_value(r.device == "auto" or r.device == "cpu" or r.device.startswith("cuda"), "run.device",
           "'auto', 'cpu', 'cuda' or 'cuda:N'", r.device)
    for key in ("compile", "sync_bn"):
        check_value(isinstance(getattr(r, key), bool), f"run.{key}", "true or false", getattr(r, key))
    check_value(isinstance(r.eval_every, int) and not isinstance(r.eval_every, bool) and r.eval_every >= 1,
           "run.eval_every", "an integer >= 1", r.eval_every)
    check_value(isinstance(r.checkpoint_every, int) and not isinstance(r.checkpoint_every, bool)
                and r.checkpoint_every >= 0, "run.checkpoint_every",
                "an integer >= 0 (optimizer steps between checkpoints; 0 = at epoch ends only)", r.checkpoint_every)
    check_value(r.stop_epoch is None or 1 <= r.stop_epoch <= o.epochs, "run.stop_epoch",
           f"null or an integer in [1, optim.epochs={o.epochs}]", r.stop_epoch)
