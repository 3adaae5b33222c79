"""``mixlab show``: mix one batch with a method and draw it.

    path, what = show_method("fmix", n=8, seed=0, overrides=["method.params.decay_power=4"])
    print(f"fmix: {what}; wrote {path}")                  # runs/show/fmix.png

Row 1 the inputs, row 2 their partners (``inputs[index]``), row 3 the mask (per-pixel weight of the
own image; a flat grey tile at λ for global mixes such as Mixup), row 4 the mixed images with
their top-2 soft label and λ (:func:`~mixlab.engine.plots.plot_mix`). The images are drawn from the
training split as the trainer sees them (the run's test crop for images of mixed sizes, normalised
with the split's statistics); the method mixes them in training mode, as for ``samples.png``.

    measured = show_effective_classes("recursivemix", steps=100)   # mixlab show --effective-classes 100
    print(measured.mean)                                             # about 4.5 (RecursiveMix Fig. 7)

:func:`show_effective_classes` measures instead the effective class number of the method's
targets over the first steps of the run the same settings would train
(:func:`mixlab.engine.effective.run_effective_classes`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from mixlab import registry
from mixlab.engine.checkpoint import load_checkpoint
from mixlab.engine.config import config_from_dict
from mixlab.engine.data import default_transforms
from mixlab.engine.plots import plot_mix
from mixlab.engine.presets import load_run_config
from mixlab.evaluation.effective_classes import EFFECTIVE_THRESHOLD, EffectiveClasses

__all__ = ["show_method", "show_effective_classes"]


def show_method(method: str, *, dataset: str | None = None, data_root: str | None = None, n: int = 8, seed: int = 0,
                out: str | Path | None = None, checkpoint: str | None = None, overrides: Sequence[str] = ()
                ) -> tuple[Path, str]:
    """Draw what ``method`` does to ``n`` images of ``dataset`` into ``out``.

    Args:
        method: a registered method name.
        dataset, data_root: where the images come from (default: the synthetic shapes, or the
            checkpoint's dataset).
        n: images in the batch, 2 to 32.
        seed: seed of the images drawn and of the mixing.
        out: the PNG to write (default ``runs/show/<method>.png``).
        checkpoint: a run directory or checkpoint of ``method``: its model, method state (AutoMix's
            Mix Block) and config, under ``overrides``.
        overrides: ``key=value`` config overrides (``method.params.alpha=0.4``).

    Returns:
        ``(the PNG written, what was drawn: "no mixing", the λ of each mix, or their mean λ)``.

    Raises:
        ValueError: ``n`` out of range or larger than the dataset, a checkpoint of another method or
            number of classes, unknown names or settings.
    """
    if not 2 <= n <= 32:
        raise ValueError(f"--n must be in [2, 32] (mixing pairs images; one column per image), got {n}")
    cfg, ckpt = _show_config(method, dataset, data_root, checkpoint, overrides)
    m, d = cfg.method, cfg.data
    registry.check_names(m.name, m.params, dataset=d.name)
    g = torch.Generator().manual_seed(seed)
    # the synthetic set is rendered: just enough images (same law as the training set's)
    kwargs = {"num_per_class": n, "image_size": d.image_size, "seed": seed} if d.name == "synthetic" else {}
    images_set = registry.build_dataset(d.name, "train", root=d.root, **kwargs)
    if len(images_set) < n:
        raise ValueError(f"--n {n} is larger than the dataset ({len(images_set)} images)")
    picks = torch.randperm(len(images_set), generator=g)[:n].tolist()
    _, resize = default_transforms(images_set, cfg)  # images of mixed sizes: the run's test crop to data.image_size
    images_set = images_set.with_transform(resize)
    images = torch.stack([images_set[i][0] for i in picks])  # (n, C, H, W) uint8
    labels = torch.tensor([images_set[i][1] for i in picks])
    from mixlab.data import normalize_on_device

    images = normalize_on_device(images, images_set.mean, images_set.std)  # as the trainer's batches
    if ckpt is not None and ckpt["num_classes"] != images_set.num_classes:
        raise ValueError(f"--checkpoint {checkpoint} has {ckpt['num_classes']} classes, dataset {d.name!r} "
                         f"has {images_set.num_classes}")
    mixer = registry.build_method(m.name, images_set.num_classes, m.label_smoothing, **m.params)
    model = registry.build_model(cfg.model.name, images_set.num_classes, **cfg.model.kwargs)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    mixer.setup(model, g)
    if ckpt is not None:
        mixer.load_state_dict(ckpt["method"])
    lams = mixer.preview_lams  # AutoMix: one mix per λ, the same partners for each
    with torch.no_grad():  # in training mode, as the trainer's samples.png
        if lams:
            state = g.get_state()
            mixed = []
            for lam in lams:
                g.set_state(state)
                mixed.append(mixer.mix_preview(images, labels, lam=lam))
        else:
            mixed = mixer.mix_preview(images, labels)
    path = Path(out or Path("runs") / "show" / f"{m.name}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    params = ", ".join(f"{k}={v}" for k, v in {**registry.METHODS[m.name].defaults, **m.params}.items())
    trained = f", epoch {ckpt['epoch']} of {Path(ckpt['path']).parent.name}" if ckpt is not None else ""
    plot_mix(images, labels, mixed, images_set.classes, path, images_set.mean, images_set.std,
             title=f"{m.name}{f'({params})' if params else ''} on {d.name}, seed {seed}{trained}")
    first = mixed[0] if isinstance(mixed, list) else mixed
    what = ("no mixing" if first is None else "lambda " + ", ".join(f"{lam:g}" for lam in lams) if lams
            else f"mean lambda {float(first.lam.float().mean()):.2f}")
    return path, what


def _show_config(method: str, dataset: str | None, data_root: str | None, checkpoint: str | None,
                 overrides: Sequence[str]):
    """``(config, checkpoint or None)`` of ``mixlab show``: the defaults (or the checkpoint's
    config), ``overrides``, then the method and data given."""
    ckpt, base = None, None
    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        base = config_from_dict(ckpt["config"], source=ckpt["path"])
        if base.method.name != method:
            raise ValueError(f"--checkpoint {checkpoint} was trained with method {base.method.name!r}, not {method!r}")
    values = {"method.name": method}
    if dataset is not None or base is None:
        values.update({"data.name": dataset or "synthetic", "data.root": data_root})
    elif data_root is not None:
        values["data.root"] = data_root
    return load_run_config(None, overrides, base, values, method_settings=ckpt is None), ckpt


def show_effective_classes(method: str, *, steps: int = 100, dataset: str | None = None, data_root: str | None = None,
                           checkpoint: str | None = None, overrides: Sequence[str] = (),
                           threshold: float = EFFECTIVE_THRESHOLD, device: str = "cpu") -> EffectiveClasses:
    """The effective class number of ``method``'s targets over the first ``steps`` steps of the run
    that ``mixlab train`` would start with the same settings (batch size, data, seed from
    ``overrides``; label smoothing off), without training.

    Args:
        method: a registered classification method.
        steps: training steps to replay, >= 1.
        dataset, data_root, checkpoint, overrides: as :func:`show_method` (with ``checkpoint``, its
            config and trained weights).
        threshold: target weights strictly above it count (default 10⁻⁴).
        device: where the steps run.

    Raises:
        ValueError: a self-supervised method, bad ``steps``/``threshold``, unknown names or settings.
    """
    from mixlab.engine.effective import run_effective_classes

    cfg, ckpt = _show_config(method, dataset, data_root, checkpoint, overrides)
    registry.check_names(cfg.method.name, cfg.method.params, dataset=cfg.data.name)
    return run_effective_classes(cfg, steps, threshold, device, model_state=ckpt["model"] if ckpt else None)
