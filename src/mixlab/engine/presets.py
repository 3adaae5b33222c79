"""How the commands assemble a run's config, and their recipe values (``configs/presets.yaml``).

    cfg = run_config("my.yaml", ["optim.lr=0.05"], {"method.name": "mixup"})  # mixlab train my.yaml ...
    cfg = run_config(None, resume="runs/x", values={"optim.epochs": 40})      # mixlab train --resume runs/x
    cfg = pretrain_config(None, framework="dino", sdmp=True)                  # mixlab pretrain --framework dino --sdmp

A run's settings are layered: the defaults (``configs/default.yaml``; ``mixlab pretrain``:
``configs/pretrain.yaml``), the method's own run settings (``MethodSpec.config``: MAE's ViT and
optimiser), a YAML file, ``--set`` overrides, then the flags. A resumed run starts from its
checkpoint's config instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml

from mixlab import registry
from mixlab.engine.checkpoint import load_checkpoint
from mixlab.engine.config import TrainConfig, config_from_dict, load_config
from mixlab.engine.writer import default_run_dir

__all__ = ["PRESETS", "PRETRAIN_CONFIG", "PRETRAIN_OPTIONS", "load_run_config", "run_config", "pretrain_config"]

_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # package data
#: the commands' recipe values (``configs/presets.yaml``): ``corruption_images`` (of the evaluation
#: after a run), ``model_ema_decay`` (``--model-ema``), ``small_heads`` (``mixlab pretrain``)
PRESETS: dict[str, Any] = yaml.safe_load((_CONFIGS / "presets.yaml").read_text())
#: the defaults of ``mixlab pretrain``'s runs
PRETRAIN_CONFIG = _CONFIGS / "pretrain.yaml"
#: ``mixlab pretrain``'s options that set method parameters: option -> {framework it applies to: params};
#: ``cropmix="<MIX>"`` also sets MAE's ``cropmix_mix``
PRETRAIN_OPTIONS = {"sdmp": {"mocov3": {"sdmp": True}, "dino": {"sdmp": True}},
                    "cropmix": {"mocov2": {"views": "cropmix"}, "mae": {"input": "cropmix"}},
                    "scalemix": {"mocov2": {"views": "scalemix"}}}


def load_run_config(path: str | Path | None, overrides: Iterable[str] = (), base: TrainConfig | None = None,
                    values: dict[str, Any] | None = None, *, method_settings: bool = True) -> TrainConfig:
    """:func:`~mixlab.engine.config.load_config`, with the chosen method's own run settings
    (``MethodSpec.config``: MAE's ViT and optimiser) put under the file, ``overrides`` and
    ``values`` (not with ``method_settings=False``: a resumed run keeps its checkpoint's)."""
    cfg = load_config(path, overrides, base=base, values=values)
    spec = registry.METHODS.get(cfg.method.name)
    if not method_settings or spec is None or not spec.config:
        return cfg
    base = config_from_dict(spec.config, base, source=f"method {cfg.method.name!r}'s run settings")
    return load_config(path, overrides, base=base, values=values)


def run_config(path: str | Path | None, overrides: Iterable[str] = (), values: dict[str, Any] | None = None, *,
               base: TrainConfig | None = None, resume: str | None = None, output: str | None = None) -> TrainConfig:
    """The config of a training run: ``base`` (default: the defaults), or the checkpoint's config
    when resuming (``resume``, continued in its own directory to its end), then the method's run
    settings, ``path``, ``overrides`` and ``values``; ``output`` is the parent of the run directory
    (timm's ``--output``).

    Raises:
        ValueError: ``output`` with ``resume``, an unreadable checkpoint, invalid settings.
        FileNotFoundError: ``path`` does not exist.
    """
    values = dict(values or {})
    if resume:
        if output:
            raise ValueError(f"--output DIR names where a new run goes; --resume {resume} continues the run in its "
                             f"own directory (--out DIR continues it in another one)")
        base = config_from_dict(load_checkpoint(resume)["config"], source=f"checkpoint {resume}")
        base.run.out, base.run.stop_epoch = None, None  # continue in the checkpoint's directory, to the end
        values["run.resume"] = resume
    cfg = load_run_config(path, overrides, base, values, method_settings=not resume)
    if output:
        cfg.run.out = str(Path(output) / default_run_dir(cfg).name)
    return cfg


def pretrain_config(path: str | Path | None, overrides: Iterable[str] = (), values: dict[str, Any] | None = None, *,
                    framework: str | None = None, sdmp: bool | None = None, cropmix: str | None = None,
                    scalemix: bool | None = None, resume: str | None = None, output: str | None = None
                    ) -> TrainConfig:
    """The config of a self-supervised pre-training: :func:`run_config` on ``configs/pretrain.yaml``,
    ``framework`` its ``method.name``; the options of :data:`PRETRAIN_OPTIONS` (``cropmix``: ``""``
    for the framework's CropMix, or MAE's mix, ``"mixup"`` or ``"cutmix"``) set method parameters,
    and heads the config leaves unset get the small-backbone sizes of ``presets.yaml``.

    Raises:
        ValueError: a method that is not self-supervised, an option for another framework, an
            unknown ``cropmix`` mix; as :func:`run_config`.
    """
    from mixlab.ssl.mae import CROPMIX_MIXES

    values = {**(values or {}), **({"method.name": framework} if framework is not None else {})}
    cfg = run_config(path, overrides, values, base=load_config(PRETRAIN_CONFIG), resume=resume, output=output)
    name = cfg.method.name
    if not registry.is_self_supervised(name):
        raise ValueError(f"method {name!r} is not self-supervised; `mixlab pretrain` takes "
                         f"{', '.join(registry.self_supervised_methods())} (`mixlab train` trains classifiers)")
    chosen: dict[str, Any] = {}
    for option, given in (("sdmp", sdmp), ("cropmix", cropmix), ("scalemix", scalemix)):
        if given is not None:
            frameworks = PRETRAIN_OPTIONS[option]
            if name not in frameworks:
                raise ValueError(f"--{option} applies to --framework {' or '.join(frameworks)}, not {name}")
            chosen.update(frameworks[name])
    if cropmix:  # --cropmix MIX
        if name != "mae" or cropmix not in CROPMIX_MIXES:
            raise ValueError(f"--cropmix MIX takes {' or '.join(CROPMIX_MIXES)}, for --framework mae only; got "
                             f"{cropmix!r} for {name}")
        chosen["cropmix_mix"] = cropmix
    cfg.method.params = {**PRESETS["small_heads"].get(name, {}), **cfg.method.params, **chosen}
    return cfg
