"""Evaluate a finished (or interrupted) run from its checkpoint: ``evaluate_checkpoint``.

    mixlab eval runs/cutmix-resnet_small-synthetic-20250101-120000
    mixlab eval runs/x/checkpoint.pt --no-corruptions --device cpu

    from mixlab.engine.eval_run import evaluate_checkpoint
    results = evaluate_checkpoint("runs/x", max_corruption_images=500)
    print(results["clean"]["top1"], results["corruptions"]["mCA"])

The model and the test split are rebuilt from the config saved in the checkpoint, as the trainer
built them (same dataset and size, same test transform, the train split's normalisation), the
saved weights are loaded, and :func:`mixlab.engine.evaluation.evaluate_all` measures clean top-1 /
top-5 / NLL, ECE and RMS calibration error (15 bins), FGSM accuracy (ε = 8/255 in pixel space) and
accuracy under the corruptions at severities 1-5. The results go to ``eval.json`` and the
reliability diagram to ``calibration.png``, next to the checkpoint. A run that kept an EMA of the
weights (``model.ema_decay > 0``) is evaluated twice: the plain weights (the top-level results) and
the EMA weights (``results["ema"]``, ``calibration-ema.png``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixlab import registry
from mixlab.engine.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from mixlab.engine.config import TrainConfig, config_from_dict
from mixlab.engine.evaluation import evaluate_all

__all__ = ["evaluate_checkpoint", "EVAL_NAME"]

EVAL_NAME = "eval.json"


def _checkpoint_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``<run dir>/checkpoint.pt``; ValueError naming ``path`` otherwise."""
    p = Path(path)
    if p.is_dir():
        if not (p / CHECKPOINT_NAME).is_file():
            raise CheckpointError(f"cannot evaluate {path}: the directory has no {CHECKPOINT_NAME} "
                                  f"(expected a run directory or a checkpoint file)")
        return p / CHECKPOINT_NAME
    if not p.is_file():
        raise CheckpointError(f"cannot evaluate {path}: no such checkpoint file or run directory")
    return p


def _split(cfg: TrainConfig, split: str):
    """One split of the run's dataset, as ``trainer._datasets`` builds it (sizes and seed for the
    synthetic set; other datasets take only a root)."""
    d = cfg.data
    per_class = d.num_per_class if split == "train" else d.test_per_class
    kwargs = {"num_per_class": per_class, "image_size": d.image_size, "seed": cfg.run.seed} \
        if d.name == "synthetic" else {}
    return registry.build_dataset(d.name, split, root=d.root, **kwargs)


def _data(cfg: TrainConfig, path: str | os.PathLike) -> tuple[Any, tuple, tuple]:
    """``(test set with the run's test transform, mean, std)``.

    The trainer normalises with the train split's statistics. Datasets with fixed statistics
    (synthetic, CIFAR) carry the same ones in every split, so only the test split is built;
    otherwise (ImageFolder computes them from the images) the train split, and its class-balanced
    subset, are rebuilt as the trainer did.
    """
    from mixlab.engine.trainer import _transforms

    d = cfg.data
    try:
        test_set = _split(cfg, "test")
        train_set = None
        if getattr(test_set, "_mean", None) is None:  # statistics not fixed by the dataset
            train_set = _split(cfg, "train")
            if d.train_per_class is not None:
                from mixlab.data import class_balanced_subset

                train_set = train_set.subset(class_balanced_subset(
                    train_set.labels, d.train_per_class, seed=cfg.run.seed, classes=train_set.classes))
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"cannot evaluate {path}: the run's dataset {d.name!r} (root {d.root}) cannot be loaded: "
                         f"{e}. If the data moved, pass its new location (data_root=..., mixlab eval --data-root PATH)"
                         ) from None
    if len(test_set) == 0:
        raise ValueError(f"cannot evaluate {path}: the test split of dataset {d.name!r} (root {d.root}) is empty")
    stats = train_set if train_set is not None else test_set
    _, test_transform = _transforms(stats, cfg)
    return test_set.with_transform(test_transform), stats.mean, stats.std


def _load_weights(model: nn.Module, state: dict[str, Any], what: str, ckpt_path: str) -> nn.Module:
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        detail = " ".join(line.strip() for line in str(e).strip().splitlines()[:3])[:600]
        raise CheckpointError(f"checkpoint {ckpt_path}: the saved {what} do not fit the model of its config: "
                              f"{detail}") from None
    return model


def _build(cfg: TrainConfig, num_classes: int, device: torch.device) -> nn.Module:
    kwargs = {k: v for k, v in cfg.model.kwargs.items() if k != "pretrained"}  # the weights come from the checkpoint
    model = registry.build_model(cfg.model.name, num_classes, **kwargs)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.to(device).eval()


def evaluate_checkpoint(path: str | os.PathLike, *, fgsm: bool = True, corruptions: bool = True,
                        max_corruption_images: int | None = None, device: str = "auto",
                        batch_size: int | None = None, progress: bool = True,
                        data_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate the checkpoint at ``path`` on its run's test split; write ``eval.json`` beside it.

    Args:
        path: a run directory (its ``checkpoint.pt`` is used) or a checkpoint file.
        fgsm: measure top-1 under FGSM, ε = 8/255 in pixel space.
        corruptions: measure top-1 under every corruption at severities 1-5.
        max_corruption_images: corruption accuracy on N test images evenly strided over the test
            split (default: all).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        batch_size: evaluation batch size (default: the run's ``data.eval_batch_size``).
        progress: tqdm bar over the corruptions.
        data_root: where the dataset is now, if it moved since training (replaces ``data.root``).

    Returns:
        :func:`~mixlab.engine.evaluation.evaluate_all`'s dict for the plain weights (``clean``,
        ``fgsm``, ``corruptions``; accuracies and calibration errors in %), plus ``ema`` (the same
        dict for the EMA weights, or ``None`` when the run kept no EMA), ``checkpoint``, ``epoch``,
        ``method``, ``model``, ``dataset``, ``device``, ``seconds`` and ``eval_json`` (the path
        written). ``format_table(results)`` prints it.

    Raises:
        ValueError (``CheckpointError`` is one): ``path`` is missing, not a mixlab checkpoint, or
            truncated; its weights do not fit its config's model; the run's dataset cannot be
            loaded (the message says to pass ``data_root``); the directory is not writable.

    Note:
        ``eval.json`` is named after nothing but its directory: two checkpoint files in one
        directory share it (the last evaluation wins).
    """
    from mixlab.engine.trainer import resolve_device

    t0 = time.perf_counter()
    for name, value in (("max_corruption_images", max_corruption_images), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
    if not isinstance(device, str) or not (device in ("auto", "cpu") or device.startswith("cuda")):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    ckpt_path = _checkpoint_file(path)
    ckpt = load_checkpoint(ckpt_path)  # CheckpointError (a ValueError) naming the file when corrupt
    cfg = config_from_dict(ckpt["config"], source=f"checkpoint {ckpt_path}")
    if data_root is not None:
        cfg.data.root = str(data_root)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device is {device!r} but CUDA is not available; use 'auto' or 'cpu'")
    try:
        dev = resolve_device(device)
    except RuntimeError as e:  # torch.device("cuda:x")
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r} ({e})") from None
    test_set, mean, std = _data(cfg, path)
    num_classes = ckpt["num_classes"]
    if test_set.num_classes != num_classes:
        raise ValueError(f"cannot evaluate {path}: the checkpoint's model has {num_classes} classes, the test split "
                         f"of dataset {cfg.data.name!r} (root {cfg.data.root}) has {test_set.num_classes}")
    batch_size = batch_size or cfg.data.eval_batch_size
    if test_set.transform is None:  # decoded uint8 tensors: sliced into batches, no loader needed
        data: Any = (test_set.images, test_set.labels)
    else:  # images decoded per item (mixed sizes): resized and cropped by the run's test transform
        data = torch.utils.data.DataLoader(test_set, batch_size=batch_size, num_workers=cfg.data.num_workers)

    models = {"model": _load_weights(_build(cfg, num_classes, dev), ckpt["model"], "model weights", ckpt["path"])}
    if ckpt["ema"] is not None:  # AveragedModel.state_dict(): "module.<name>" entries + "n_averaged"
        ema_state = {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
        models["ema"] = _load_weights(_build(cfg, num_classes, dev), ema_state, "EMA weights", ckpt["path"])

    out_dir = ckpt_path.parent
    evaluations: dict[str, dict[str, Any]] = {}
    threads = torch.get_num_threads()
    if cfg.run.threads:  # the run's CPU threads (0: leave torch's default, all cores)
        torch.set_num_threads(cfg.run.threads)
    try:
        with tempfile.TemporaryDirectory(prefix=".eval-", dir=out_dir) as tmp:
            for name, model in models.items():
                evaluations[name] = evaluate_all(
                    model, data, mean, std, dev, out_dir=Path(tmp) / name, fgsm=fgsm, corruptions=corruptions,
                    max_corruption_images=max_corruption_images, batch_size=batch_size, progress=progress)
            results: dict[str, Any] = {
                **evaluations["model"],
                "ema": evaluations.get("ema"),
                "checkpoint": str(ckpt_path),
                "epoch": ckpt["epoch"],
                "method": cfg.method.name,
                "model": cfg.model.name,
                "dataset": cfg.data.name,
                "device": str(dev),
                "seconds": round(time.perf_counter() - t0, 2),
                "eval_json": str(out_dir / EVAL_NAME),
            }
            for name, png in (("model", "calibration.png"), ("ema", "calibration-ema.png")):
                if name in models:
                    os.replace(Path(tmp) / name / "calibration.png", out_dir / png)
            tmp_json = Path(tmp) / EVAL_NAME
            tmp_json.write_text(json.dumps(results, indent=2) + "\n")
            os.replace(tmp_json, out_dir / EVAL_NAME)
    except PermissionError as e:
        raise ValueError(f"cannot write the evaluation of {path} into {out_dir}: {e.strerror or e}") from None
    finally:
        torch.set_num_threads(threads)  # as in the trainer, run.threads applies to the run only
    return results

