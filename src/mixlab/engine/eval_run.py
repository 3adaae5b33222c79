"""Evaluate a finished (or interrupted) run from its checkpoint: ``evaluate_checkpoint``.

    mixlab eval runs/cutmix-resnet_small-synthetic-20250101-120000
    mixlab eval runs/x/checkpoint.pt --no-corruptions --device cpu

    from mixlab.engine.eval_run import evaluate_checkpoint
    results = evaluate_checkpoint("runs/x", max_corruption_images=500)
    print(results["clean"]["top1"], results["corruptions"]["mCA"])

The model and the test split are rebuilt from the config saved in the checkpoint, as the trainer
built them (same dataset and size, same test transform, the train split's normalisation), the
saved weights are loaded, and :func:`mixlab.evaluation.evaluate_all` measures clean top-1 /
top-5 / NLL, ECE and RMS calibration error (15 bins), FGSM accuracy (ε = 8/255 in pixel space) and
accuracy under the corruptions at severities 1-5, and the out-of-distribution detection by the
maximum softmax probability against synthetic noise images (AUROC, FPR@95TPR;
:mod:`mixlab.evaluation.ood`); on a dataset with object boxes (the synthetic shapes,
CUB-200-2011) also the weakly supervised localization, MaxBoxAccV2 of the true class's CAM
(:func:`localization_split`, :func:`mixlab.evaluation.wsol.localization_accuracy`); on request the
effective class number of the run's first training steps (:mod:`mixlab.engine.effective`). The
results go to ``eval.json`` and the reliability diagram to ``calibration.png``, next to the
checkpoint. A run that kept an EMA of the weights (``model.ema_decay > 0``) is evaluated twice: the plain weights (the top-level results) and
the EMA weights (``results["ema"]``, ``calibration-ema.png``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from mixlab import registry
from mixlab.engine.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, load_state
from mixlab.engine.config import TrainConfig, config_from_dict
from mixlab.engine.data import align_test_split, build_split, default_transforms, train_split
from mixlab.engine.distributed import resolve_device
from mixlab.evaluation import OOD_SETS, evaluate_all, localization_accuracy

__all__ = ["evaluate_checkpoint", "EVAL_NAME", "OOD_IMAGES", "open_checkpoint", "eval_data", "check_classes", "rebuild_model",
           "load_weights", "run_threads", "results_head", "localization_split"]

EVAL_NAME = "eval.json"
#: images of each synthetic OOD set (gaussian, uniform): their forward passes are 1.6 % of the time of
#: the default run's final evaluation (8 s on two idle cores), less than a pass over its 1 000 test images
OOD_IMAGES = 500


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


def open_checkpoint(path: str | os.PathLike, data_root: str | os.PathLike | None
                    ) -> tuple[Path, dict[str, Any], TrainConfig]:
    """``(checkpoint file, checkpoint, its run's config)``; ``data_root`` replaces ``data.root``.

    Raises:
        CheckpointError: nothing at ``path``, or not a readable mixlab checkpoint.
    """
    ckpt_path = _checkpoint_file(path)
    ckpt = load_checkpoint(ckpt_path)  # CheckpointError (a ValueError) naming the file when corrupt
    cfg = config_from_dict(ckpt["config"], source=f"checkpoint {ckpt_path}")
    if data_root is not None:
        cfg.data.root = str(data_root)
    return ckpt_path, ckpt, cfg


def eval_data(cfg: TrainConfig, path: str | os.PathLike, train: bool = False) -> tuple[Any, tuple, tuple, Any]:
    """``(test set with the run's test transform, mean, std, train set or None)``.

    The trainer normalises with the train split's statistics. Datasets with fixed statistics
    (synthetic, CIFAR) carry the same ones in every split, so only the test split is built;
    otherwise (ImageFolder computes them from the images) the train split, and its class-balanced
    subset, are rebuilt as the trainer did. With ``train=True`` the training split (as the trainer
    built it) is returned too, with the TEST transform (no augmentation; the linear probe's).

    Raises:
        ValueError: the dataset cannot be loaded (the message says to pass ``data_root``), a split
            is empty, or the test split has a class the train split lacks.
    """
    d = cfg.data
    try:
        test_set = build_split(cfg, "test")
        train_set = None
        if train or not test_set.stats_known:  # statistics not fixed by the dataset
            train_set = train_split(cfg)
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"cannot evaluate {path}: the run's dataset {d.name!r} (root {d.root}) cannot be loaded: "
                         f"{e}. If the data moved, pass its new location (data_root=..., or --data-root PATH on the "
                         f"command line)") from None
    for split, dataset in (("test", test_set), ("train", train_set)):
        if dataset is not None and len(dataset) == 0:
            raise ValueError(f"cannot evaluate {path}: the {split} split of dataset {d.name!r} (root {d.root}) is "
                             f"empty")
    if train_set is not None:  # the model's outputs are the train split's classes (fixed datasets: the same)
        try:
            test_set = align_test_split(train_set, test_set, cfg)
        except ValueError as e:
            raise ValueError(f"cannot evaluate {path}: {e}") from None
    stats = train_set if train_set is not None else test_set
    _, test_transform = default_transforms(stats, cfg)
    return (test_set.with_transform(test_transform), stats.mean, stats.std,
            train_set.with_transform(test_transform) if train else None)


def check_classes(ckpt: dict[str, Any], test_set, cfg: TrainConfig, path: str | os.PathLike) -> int:
    """The checkpoint's number of classes, which the test split must have too (else ``ValueError``)."""
    num_classes = ckpt["num_classes"]
    if test_set.num_classes != num_classes:
        raise ValueError(f"cannot evaluate {path}: the checkpoint's model has {num_classes} classes, the test split "
                         f"of dataset {cfg.data.name!r} (root {cfg.data.root}) has {test_set.num_classes}")
    return num_classes


def localization_split(cfg: TrainConfig, test_set, path: str | os.PathLike):
    """The images the localization is measured on, with their ``boxes``, or None when the run's
    test split has no boxes.

    The benchmark's test images are whole images resized to the input size (Choe et al. 2020,
    ``Resize((224, 224))``), never cropped, so that the boxes stay inside them: a test split of
    fixed-size images (the synthetic shapes) is used as it is; one of mixed sizes, which the run
    tests through a crop, is rebuilt with every image resized to ``data.image_size`` squared and
    its boxes scaled (``build_dataset(name, "test", root, image_size=...)``, CUB-200-2011's reader).
    Labels are the evaluated test split's (the model's class indices).

    Raises:
        ValueError: the dataset of mixed sizes cannot be rebuilt at a fixed size.
    """
    if getattr(test_set, "boxes", None) is None:
        return None
    if not test_set.is_lazy:
        return test_set
    d = cfg.data
    try:
        resized = registry.build_dataset(d.name, "test", root=d.root, image_size=d.image_size)
    except (TypeError, OSError, ValueError) as e:
        raise ValueError(f"cannot evaluate the localization of {path}: the test images of dataset {d.name!r} differ "
                         f"in size and cannot be rebuilt resized to {d.image_size} ({e}); pass --no-wsol") from None
    return resized.with_classes(test_set.classes)


def results_head(ckpt_path: Path, ckpt: dict[str, Any], cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """The head of a results dict: which checkpoint, epoch, method, model, dataset and device."""
    return {"checkpoint": str(ckpt_path), "epoch": ckpt["epoch"], "method": cfg.method.name,
            "model": cfg.model.name, "dataset": cfg.data.name, "device": str(device)}


@contextlib.contextmanager
def run_threads(cfg: TrainConfig) -> Iterator[None]:
    """torch's CPU threads set to the run's ``run.threads`` (0: leave torch's default, all cores)
    inside the block, restored after it (as in the trainer, run.threads applies to the run only)."""
    threads = torch.get_num_threads()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load_weights(model: nn.Module, state: dict[str, Any], what: str, ckpt_path: str) -> nn.Module:
    """``model`` with ``state`` loaded, or ``CheckpointError`` naming ``what`` and the checkpoint."""
    load_state(lambda: model.load_state_dict(state),
               f"checkpoint {ckpt_path}: the saved {what} do not fit the model of its config")
    return model


def rebuild_model(cfg: TrainConfig, num_classes: int, device: torch.device) -> nn.Module:
    """The run's model, as the trainer built it, on ``device`` in eval mode (weights not loaded)."""
    kwargs = {k: v for k, v in cfg.model.kwargs.items() if k != "pretrained"}  # the weights come from the checkpoint
    model = registry.build_model(cfg.model.name, num_classes, **kwargs)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.to(device).eval()


def evaluate_checkpoint(path: str | os.PathLike, *, fgsm: bool = True, corruptions: bool = True,
                        max_corruption_images: int | None = None, device: str = "auto",
                        batch_size: int | None = None, progress: bool = True,
                        data_root: str | os.PathLike | None = None, wsol: bool | None = None,
                        ood: bool = True, ood_images: int = OOD_IMAGES, effective_classes: int = 0
                        ) -> dict[str, Any]:
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
        wsol: weakly supervised localization (MaxBoxAccV2, IoU 30/50/70, CAM thresholds 0, 0.01,
            ..., 0.99) on the test images with their boxes (:func:`localization_split`): ``None``
            (default) when the dataset has boxes, ``True`` always (an error without boxes),
            ``False`` never.
        ood: score the max-softmax out-of-distribution detector against the synthetic sets
            :data:`~mixlab.evaluation.ood.OOD_SETS` (Gaussian and uniform noise images).
        ood_images: images of each OOD set (default :data:`OOD_IMAGES`; None: as many as the test
            images).
        effective_classes: N > 0 measures the effective class number of the run's first N
            training steps with the trained weights (:func:`~mixlab.engine.effective.run_effective_classes`);
            0 (default) does not.

    Returns:
        :func:`~mixlab.evaluation.robustness.evaluate_all`'s dict for the plain weights (``clean``,
        ``fgsm``, ``corruptions``, ``ood``; accuracies, calibration errors, AUROC in %), plus ``ema`` (the same
        dict for the EMA weights, or ``None`` when the run kept no EMA), ``wsol`` in each
        (:func:`~mixlab.evaluation.wsol.localization_accuracy`'s dict, or ``None``),
        ``effective_classes`` (``mean``, ``steps``, ``threshold``, ``images``, ``per_step``; or
        ``None``), ``checkpoint``, ``epoch``,
        ``method``, ``model``, ``dataset``, ``device``, ``seconds`` and ``eval_json`` (the path
        written). ``format_table(results)`` prints it.

    A segmentation or detection run (``data.task``) is scored by its task's metrics instead
    (:func:`mixlab.engine.dense.evaluate_dense_checkpoint`: mIoU / mAP; ``fgsm`` and
    ``corruptions`` do not apply).

    Raises:
        ValueError (``CheckpointError`` is one): ``path`` is missing, not a mixlab checkpoint, or
            truncated; it is a self-supervised run (no trained classifier: ``linear_probe`` scores
            it); its weights do not fit its config's model; the run's dataset cannot be
            loaded (the message says to pass ``data_root``); ``wsol=True`` for a dataset without
            boxes; ``effective_classes`` not an integer >= 0; the directory is not writable.

    Note:
        ``eval.json`` is named after nothing but its directory: two checkpoint files in one
        directory share it (the last evaluation wins).
    """
    t0 = time.perf_counter()
    for name, value in (("max_corruption_images", max_corruption_images), ("batch_size", batch_size),
                        ("ood_images", ood_images)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
    if isinstance(effective_classes, bool) or not isinstance(effective_classes, int) or effective_classes < 0:
        raise ValueError(f"effective_classes must be an integer >= 0 (training steps; 0: not measured), got "
                         f"{effective_classes!r}")
    if not isinstance(ood, bool):
        raise ValueError(f"ood must be True or False, got {ood!r}")
    if wsol not in (None, True, False):
        raise ValueError(f"wsol must be None (when the dataset has boxes), True or False, got {wsol!r}")
    dev = resolve_device(device, what="device")
    ckpt_path, ckpt, cfg = open_checkpoint(path, data_root)
    if registry.is_self_supervised(cfg.method.name):
        raise ValueError(f"cannot evaluate {path} as a classifier: it is a self-supervised run ({cfg.method.name}), "
                         f"whose classifier was never trained (its accuracy would be chance). `mixlab probe {path}` "
                         f"trains a linear probe on its frozen backbone and evaluates that (`mixlab finetune {path}` "
                         f"fine-tunes it with labels)")
    if cfg.data.task != "classification":  # segmentation / detection: mIoU / mAP (no FGSM, no corruptions)
        from mixlab.engine.dense import evaluate_dense_checkpoint

        return evaluate_dense_checkpoint(ckpt_path, ckpt, cfg, dev, batch_size)
    test_set, mean, std, _ = eval_data(cfg, path)
    num_classes = check_classes(ckpt, test_set, cfg, path)
    batch_size = batch_size or cfg.data.eval_batch_size
    from mixlab.data import eval_loader

    data = eval_loader(test_set, batch_size, cfg.data.num_workers)
    boxed = localization_split(cfg, test_set, path) if wsol is not False else None
    if wsol is True and boxed is None:
        raise ValueError(f"cannot evaluate the localization of {path}: the test split of dataset {cfg.data.name!r} "
                         f"has no object boxes (synthetic and cub200 have them)")

    models = {"model": load_weights(rebuild_model(cfg, num_classes, dev), ckpt["model"], "model weights", ckpt["path"])}
    if ckpt["ema"] is not None:  # AveragedModel.state_dict(): "module.<name>" entries + "n_averaged"
        ema_state = {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
        models["ema"] = load_weights(rebuild_model(cfg, num_classes, dev), ema_state, "EMA weights", ckpt["path"])

    out_dir = ckpt_path.parent
    evaluations: dict[str, dict[str, Any]] = {}
    try:
        with run_threads(cfg), tempfile.TemporaryDirectory(prefix=".eval-", dir=out_dir) as tmp:
            for name, model in models.items():
                evaluations[name] = evaluate_all(
                    model, data, mean, std, dev, out_dir=Path(tmp) / name, fgsm=fgsm, corruptions=corruptions,
                    max_corruption_images=max_corruption_images, batch_size=batch_size, progress=progress,
                    ood=OOD_SETS if ood else (), ood_images=ood_images)
                evaluations[name]["wsol"] = None if boxed is None else localization_accuracy(
                    model, eval_loader(boxed, batch_size, cfg.data.num_workers), boxed.boxes, mean, std, dev)
            effective = None
            if effective_classes:
                from mixlab.engine.effective import effective_classes_dict, run_effective_classes

                effective = effective_classes_dict(run_effective_classes(
                    cfg, effective_classes, device=str(dev), model_state=ckpt["model"]))
            results: dict[str, Any] = {
                **evaluations["model"],
                "effective_classes": effective,
                "ema": evaluations.get("ema"),
                **results_head(ckpt_path, ckpt, cfg, dev),
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
    return results

