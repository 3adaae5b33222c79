"""``mixlab`` command line: argument parsing and printing; the work happens in :mod:`mixlab.engine`
(runs, their configs and recipe values: :mod:`mixlab.engine.presets`) and :mod:`mixlab.bench`.

    mixlab train                                  # the default run: CutMix, resnet_small, synthetic shapes
    mixlab train my.yaml --set optim.lr=0.05 --epochs 30
    mixlab train --method mixup --model resnet18 --dataset imagefolder --data-root /path/to/cifar10-jpeg.zip
    mixlab train --resume runs/cutmix-resnet_small-synthetic-20250101-120000
    mixlab eval runs/cutmix-resnet_small-synthetic-20250101-120000 --max-corruption-images 1000
    mixlab finetune runs/mocov2-resnet_small-imagefolder-20250101-120000 --fraction 0.01
    mixlab show --method fmix --n 8 --set method.params.decay_power=4
    mixlab cam runs/vanilla-s0 runs/cutmix-s0 --images 8 --topk 2
    mixlab list methods
    mixlab --version
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from typing import Any, Callable, Iterator, Sequence

import mixlab

from mixlab.engine.presets import PRESETS

__all__ = ["main", "build_parser", "config_from_args"]

# flag -> config key; the flags are shorthands for --set KEY=VALUE (those after `lr` are timm's
# train.py names: -b/--batch-size, -j/--workers, --data-dir, --opt, --weight-decay, --sched, ...)
_TRAIN_FLAGS = {
    "method": "method.name",
    "task": "data.task",
    "model": "model.name",
    "dataset": "data.name",
    "data_root": "data.root",
    "download": "data.download",
    "epochs": "optim.epochs",
    "batch_size": "data.batch_size",
    "lr": "optim.lr",
    "opt": "optim.name",
    "weight_decay": "optim.weight_decay",
    "sched": "optim.schedule",
    "warmup_epochs": "optim.warmup_epochs",
    "clip_grad": "optim.clip_grad",
    "smoothing": "method.label_smoothing",
    "amp": "run.amp",
    "model_ema_decay": "model.ema_decay",
    "seed": "run.seed",
    "train_per_class": "data.train_per_class",
    "workers": "data.num_workers",
    "out": "run.out",
}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Wraps prose paragraphs of descriptions and epilogs to the terminal; keeps paragraphs with
    indented lines (examples, lists) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        paragraphs = text.split("\n\n")
        return "\n\n".join(p if any(line.startswith(" ") for line in p.splitlines())
                           else textwrap.fill(" ".join(p.split()), width, initial_indent=indent,
                                              subsequent_indent=indent)
                           for p in paragraphs)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from mixlab.registry import METHODS

    width = max(map(len, METHODS)) + 1
    methods = "\n".join(f"  {name:<{width}} {spec.description}" for name, spec in METHODS.items())
    p = sub.add_parser(
        "train",
        help="train a classifier with a mixing method",
        formatter_class=_Formatter,
        description="Train a model with a mixing method and write a run directory: metrics.csv, metrics.jsonl, "
                    "checkpoint.pt (every epoch; --set run.checkpoint_every=N also every N steps), curves.png, samples.png, config.yaml; then evaluate the final "
                    "checkpoint as `mixlab eval` does (eval.json, calibration.png; --no-eval skips it), the weakly "
                    "supervised localization excepted (its threshold sweep costs about ten passes over the test "
                    "images, a third more evaluation time on the default run: `mixlab eval RUN` adds it).\n\n"
                    "Settings come from the defaults, then CONFIG.yaml, then --set, then the flags below.\n"
                    "With no arguments this is the README's default run (a few minutes on a laptop CPU).",
        epilog=f"methods:\n{methods}\n\nexamples:\n"
               "  mixlab train --method mixup --epochs 30 --set method.params.alpha=0.4\n"
               "  mixlab train --model resnet18 --dataset imagefolder --data-root /path/to/cifar10-jpeg.zip\n"
               "  mixlab train --resume runs/<run dir> --epochs 40     # continue, with a longer schedule\n"
               "  mixlab train --epochs 2 --no-eval                     # a quick check, no robustness evaluation\n"
               "  mixlab train --model resnet18 -b 64 -j 4 --opt sgd --lr 0.1 --weight-decay 5e-4 --sched cosine \\\n"
               "      --warmup-epochs 5 --smoothing 0.1 --clip-grad 1 --model-ema --output runs/timm-style\n"
               "                                                        # timm train.py's flag names work too\n\n"
               "Settings without a flag go through --set KEY=VALUE; other trainers' names of the common ones are "
               "accepted there too (--set learning_rate=0.1, --set wd=5e-4, --set batch_size=64).",
    )
    _add_run_flags(p, method=True)
    p.add_argument("--no-eval", dest="eval", action="store_false",
                   help="skip the evaluation of the final checkpoint (as `mixlab eval`: eval.json, calibration.png)")
    n = PRESETS["corruption_images"]
    p.add_argument("--eval-corruption-images", type=_non_negative, default=n, metavar="N",
                   help=f"corruption accuracy of the final evaluation on N test images, evenly spread over the "
                        f"test set (default {n}; 0 skips the corruptions)")
    p.set_defaults(func=_train)


def _add_run_flags(p: argparse.ArgumentParser, method: bool) -> None:
    """The flags `train` and `pretrain` share (config file, --set, data, model, schedule, run directory)."""
    p.add_argument("config", nargs="?", metavar="CONFIG.yaml",
                   help="YAML file with sections data/model/optim/method/run (see mixlab/configs/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, dotted, value parsed as YAML; repeatable "
                        "(e.g. --set optim.lr=0.05 --set method.params.alpha=0.4 --set run.progress=false)")
    if method:
        from mixlab.registry import METHODS

        p.add_argument("--method", metavar="NAME", help=f"training method: {', '.join(METHODS)} (default cutmix)")
        p.add_argument("--task", choices=("classification", "segmentation", "detection"),
                       help="what to train (data.task, default classification): segmentation (mIoU; methods vanilla, "
                            "mixup, cutmix, resizemix, fmix, saliencymix) or detection (mAP; vanilla, mosaic, "
                            "copypaste, mixup, cutmix, resizemix); see docs/guide/dense.md")
    p.add_argument("--model", metavar="NAME",
                   help="model: resnet18, resnet34, preactresnet18, resnet_small, wrn28_2, wrn28_10, "
                        "vit_tiny_patch4 or timm:<name> (default resnet_small)")
    p.add_argument("--dataset", metavar="NAME",
                   help="dataset: synthetic, cifar10, cifar100, imagefolder, cub200, tiny-imagenet (default synthetic)")
    p.add_argument("--data-root", "--data-dir", dest="data_root", metavar="PATH",
                   help="dataset location: a directory, or a .zip for imagefolder (data.root)")
    p.add_argument("--download", action="store_true", default=None,
                   help="cifar10, cifar100, cub200, tiny-imagenet: fetch the official archive into --data-root if "
                        "it is missing, md5-checked (data.download)")
    p.add_argument("--epochs", type=int, metavar="N", help="number of epochs (>= 1)")
    p.add_argument("-b", "--batch-size", type=int, metavar="N", help="training batch size (>= 2; data.batch_size)")
    p.add_argument("--lr", type=float, metavar="X", help="peak learning rate (> 0) of the main parameter groups")
    p.add_argument("--opt", metavar="NAME", help="optimizer: sgd (momentum 0.9, Nesterov) or adamw (optim.name)")
    p.add_argument("--weight-decay", type=float, metavar="X",
                   help="weight decay, not on biases and norms (optim.weight_decay)")
    p.add_argument("--sched", metavar="NAME", help="lr schedule after the warm-up: cosine, step or constant "
                                                   "(optim.schedule)")
    p.add_argument("--warmup-epochs", type=float, metavar="N", help="epochs of linear lr warm-up (optim.warmup_epochs)")
    p.add_argument("--clip-grad", type=float, metavar="X",
                   help="clip the gradients' global norm to X; 0 disables (optim.clip_grad)")
    if method:
        p.add_argument("--smoothing", type=float, metavar="X", help="label smoothing in [0, 1) "
                                                                     "(method.label_smoothing)")
    p.add_argument("--amp", nargs="?", const="auto", metavar="MODE",
                   help="mixed precision on a GPU: auto (bare --amp: bf16 where the GPU supports it), bf16, fp16 "
                        "or none; CPU runs stay in float32 (run.amp, default auto)")
    p.add_argument("--model-ema", action="store_true",
                   help=f"keep an EMA of the weights, evaluated too (model.ema_decay="
                        f"{PRESETS['model_ema_decay']}, timm's default)")
    p.add_argument("--model-ema-decay", type=float, metavar="X",
                   help="the EMA's decay in [0, 1) (model.ema_decay; implies --model-ema)")
    p.add_argument("--seed", type=int, metavar="N", help="run seed (>= 0); the rank is added to it")
    p.add_argument("--train-per-class", type=int, metavar="N",
                   help="train on a class-balanced subset of N images per class")
    p.add_argument("-j", "--workers", type=int, metavar="N",
                   help="DataLoader worker processes (0 = load in the main process; data.num_workers)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", metavar="DIR",
                     help="run directory (default runs/<method>-<model>-<dataset>-<timestamp>; "
                          "the checkpoint's directory when resuming)")
    out.add_argument("--output", metavar="DIR",
                     help="parent directory of the run, as timm's --output: the run goes to "
                          "DIR/<method>-<model>-<dataset>-<timestamp> (default DIR: runs)")
    p.add_argument("--resume", metavar="PATH",
                   help="continue from a checkpoint file or a run directory; its config is the starting point, "
                        "CONFIG.yaml/--set/flags given here change it")


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """``{config key: value}`` of the run flags given (``_TRAIN_FLAGS``, ``--model-ema``)."""
    values = {key: getattr(args, flag) for flag, key in _TRAIN_FLAGS.items() if getattr(args, flag, None) is not None}
    if args.model_ema and args.model_ema_decay is None:
        values["model.ema_decay"] = PRESETS["model_ema_decay"]
    return values


def config_from_args(args: argparse.Namespace):
    """The run config of parsed ``mixlab train`` / ``pretrain`` arguments: the defaults (or the
    checkpoint's with ``--resume``), CONFIG.yaml, ``--set``, then the flags
    (:func:`mixlab.engine.presets.run_config` / :func:`~mixlab.engine.presets.pretrain_config`)."""
    from mixlab.engine.presets import pretrain_config, run_config

    where = {"resume": args.resume, "output": args.output}
    if args.command == "pretrain":
        return pretrain_config(args.config, args.overrides, _flag_values(args), framework=args.framework,
                               sdmp=args.sdmp, cropmix=args.cropmix, scalemix=args.scalemix, **where)
    return run_config(args.config, args.overrides, _flag_values(args), **where)


def _train(args: argparse.Namespace) -> int:
    from mixlab.engine import train

    cfg = config_from_args(args)
    metrics = train(cfg)
    if int(os.environ.get("RANK", 0)) == 0:  # torchrun: rank 0 reports and evaluates
        _report_train(metrics, cfg, args.eval_corruption_images if args.eval else None)
    return 0


def _report_train(metrics: dict[str, Any], cfg: Any, corruption_images: int | None) -> None:
    """Print the run's final accuracy, then evaluate its final checkpoint as `mixlab eval` does
    (``corruption_images`` test images for the corruptions; ``None``: no evaluation)."""
    from mixlab.engine.eval_run import evaluate_checkpoint
    from mixlab.registry import is_self_supervised

    run_dir = metrics["run_dir"]
    if is_self_supervised(cfg.method.name):  # no classifier to evaluate
        print(f"final kNN accuracy: {metrics['knn_acc1']:.2f}%\nrun directory: {run_dir}\n"
              f"(a self-supervised run: `mixlab probe {run_dir}` trains and evaluates a linear probe)")
        return
    nan = float("nan")
    if cfg.data.task == "segmentation":
        print(f"final test mIoU: {metrics.get('test_miou', nan):.2f}% (pixel accuracy "
              f"{metrics.get('test_pixel_acc', nan):.2f}%)")
    elif cfg.data.task == "detection":
        print(f"final test mAP: {metrics.get('test_map', nan):.2f}% (AP50 {metrics.get('test_map50', nan):.2f}%)")
    else:
        print(f"final test accuracy: {metrics.get('test_acc1', nan):.2f}% (top-5 {metrics.get('test_acc5', nan):.2f}%)")
    print(f"run directory: {run_dir}")
    if corruption_images is None:
        return
    if metrics.get("epoch") != cfg.optim.epochs:
        print(f"the run stopped after epoch {metrics.get('epoch', 0)} of {cfg.optim.epochs}: not evaluated "
              f"(`mixlab eval {run_dir}` evaluates any checkpoint)")
        return
    n = corruption_images
    if cfg.data.task != "classification":
        print("evaluating the final checkpoint (--no-eval skips this)", flush=True)
    else:
        print(f"evaluating the final checkpoint (clean, FGSM{f', corruptions on {n} test images' if n else ''}, "
              f"out-of-distribution detection; --no-eval skips this; `mixlab eval {run_dir}` adds the localization "
              f"on datasets with boxes)", flush=True)
    _report(evaluate_checkpoint(metrics["checkpoint"], corruptions=n > 0, max_corruption_images=n or None,
                                device=cfg.run.device, progress=cfg.run.progress, wsol=False))


# --------------------------------------------------------------------------------------- pretrain
class LazyChoices:
    """Argument choices listed by ``names()`` when argparse first reads them (an invalid value, a
    ``--help``), not when the parser is built: naming the self-supervised frameworks imports every
    method's module (torch._dynamo, timm), which a plain ``mixlab train`` does not need."""

    def __init__(self, names: Callable[[], Sequence[str]]) -> None:
        self.names = names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, value: object) -> bool:
        return value in self.names()


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="self-supervised pre-training (MoCo v3 or DINO, optionally with SDMP; MoCo v2, optionally with "
             "CropMix or ScaleMix; MAE, optionally on CropMix), then a linear probe",
        formatter_class=_Formatter,
        description="Pre-train a backbone without labels with MoCo v3 or DINO, optionally with SDMP's data mixing, "
                    "with MoCo v2, optionally with CropMix's or ScaleMix's mixed query views, or a ViT with MAE, "
                    "optionally on CropMix'ed inputs, and write a run directory as `mixlab train` does "
                    "(checkpoint.pt every epoch, metrics.csv, curves.png with the kNN monitor's top-1 each epoch, "
                    "config.yaml; MAE adds reconstructions.png). Then train a linear probe on "
                    "the frozen backbone and evaluate it, as `mixlab probe` does (--no-probe skips it).\n\n"
                    "Settings come from mixlab/configs/pretrain.yaml, then the framework's own (MAE: the model "
                    "vit_tiny_patch4 and AdamW with betas 0.9/0.95), then CONFIG.yaml, then --set, then the flags "
                    "below; head sizes they leave unset are small-backbone ones (mixlab/configs/presets.yaml). "
                    "Method options go to method.params (see `mixlab list`), e.g. --set "
                    "method.params.sdmp_version=extra. With no arguments: MoCo v3 on the synthetic shapes, a few "
                    "minutes on a CPU.",
        epilog="examples:\n"
               "  mixlab pretrain --framework mocov3 --sdmp\n"
               "  mixlab pretrain --framework dino --sdmp --set method.params.num_mixed_local=3\n"
               "  mixlab pretrain --framework mocov3 --sdmp --set 'method.params.ops=[mixup]'   # Table 8\n"
               "  mixlab pretrain --framework mocov2 --cropmix        # CropMix paper, §5 (--scalemix: its baseline)\n"
               "  mixlab pretrain --framework samix-ssl               # SAMix's Mixer on MoCo v2 (mixup InfoNCE)\n"
               "  mixlab pretrain --framework mae --cropmix           # CropMix paper, §6: Mixup of N in {2,3,4} crops\n"
               "  mixlab pretrain --framework mae --cropmix cutmix    # CropMix paper, §6: CutMix of 2 crops\n"
               "  mixlab pretrain --dataset imagefolder --data-root /path/to/cifar10-jpeg.zip --model resnet18\n"
               "  mixlab pretrain --resume runs/<run dir>",
    )
    from mixlab.registry import self_supervised_methods

    p.add_argument("--framework", choices=LazyChoices(self_supervised_methods), metavar="NAME",
                   help="the self-supervised framework: %(choices)s (default mocov3)")
    p.add_argument("--sdmp", action="store_true", default=None,
                   help="mocov3, dino: mix with SDMP (method.params.sdmp=true)")
    views = p.add_mutually_exclusive_group()
    views.add_argument("--cropmix", nargs="?", const="", default=None, metavar="MIX",
                       help="mocov2: CropMix query views, crops of (0.2, 0.6) and (0.6, 1) CutMix'ed "
                            "(method.params.views=cropmix); mae: CropMix'ed inputs (method.params.input=cropmix), "
                            "MIX mixup (the default: N from {2, 3, 4} crops) or cutmix (N = 2)")
    views.add_argument("--scalemix", action="store_true", default=None,
                       help="mocov2: ScaleMix query views, both crops of (0.2, 1) (method.params.views=scalemix)")
    _add_run_flags(p, method=False)
    p.add_argument("--no-probe", dest="probe", action="store_false",
                   help="skip the linear probe after pre-training (`mixlab probe RUN` runs it later)")
    from mixlab.engine.probe import linear_probe

    epochs, n = _defaults(linear_probe)["epochs"], PRESETS["corruption_images"]
    p.add_argument("--probe-epochs", type=_positive, default=epochs, metavar="N",
                   help=f"epochs of the linear probe on cached features (default {epochs})")
    p.add_argument("--probe-corruption-images", type=_non_negative, default=n, metavar="N",
                   help=f"corruption accuracy of the probed model on N test images (default {n}; 0 skips the "
                        f"corruptions)")
    p.set_defaults(func=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    from mixlab.engine import train
    from mixlab.engine.probe import linear_probe

    cfg = config_from_args(args)
    metrics = train(cfg)
    if int(os.environ.get("RANK", 0)) != 0:
        return 0
    print(f"final kNN accuracy: {metrics['knn_acc1']:.2f}%\nrun directory: {metrics['run_dir']}")
    if not args.probe or metrics.get("epoch") != cfg.optim.epochs:
        print(f"not probed; `mixlab probe {metrics['run_dir']}` trains and evaluates the linear probe")
        return 0
    n = args.probe_corruption_images
    _report_probe(linear_probe(metrics["checkpoint"], epochs=args.probe_epochs, corruptions=n > 0,
                               max_corruption_images=n or None, device=cfg.run.device, progress=cfg.run.progress))
    return 0


# ------------------------------------------------------------------------------------------- eval
def _non_negative(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _defaults(fn: Any) -> dict[str, Any]:
    """The keyword defaults of ``fn`` (``linear_probe``, ``finetune``): a command's flags take their
    defaults from the function they call, the one place those recipe values are written."""
    return {k: v.default for k, v in inspect.signature(fn).parameters.items() if v.default is not v.empty}


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a run: accuracy, calibration, FGSM and corruption robustness",
        formatter_class=_Formatter,
        description="Evaluate a run's checkpoint on its test split, rebuilt from the run's config (same dataset, "
                    "image size and normalisation): clean top-1 / top-5 / NLL, ECE and RMS calibration error "
                    "(15 bins), top-1 under FGSM (eps = 8/255 in pixel space), and top-1 under each CIFAR-10-C "
                    "style corruption (noise, blur, contrast, JPEG, ...) at severities 1-5 (their mean: mCA), and "
                    "how well the maximum softmax probability tells the test images from synthetic noise images "
                    "(Gaussian and uniform pixels; out-of-distribution AUROC and FPR at 95% TPR). On a "
                    "dataset with object boxes (synthetic, cub200) also the weakly supervised localization: "
                    "MaxBoxAccV2 (Choe et al. 2020) of the CAM of each test image's true class, boxes from every "
                    "contour at CAM thresholds 0, 0.01, ..., 0.99, the best threshold per IoU 30/50/70, averaged. "
                    "A run that kept an EMA of the weights is evaluated twice (plain and EMA weights).\n\n"
                    "Writes eval.json and calibration.png (calibration-ema.png) next to the checkpoint, and prints "
                    "the table. CPU threads: the run's run.threads, else torch's default (all cores).",
        epilog="examples:\n"
               "  mixlab eval runs/cutmix-resnet_small-synthetic-20250101-120000\n"
               "  mixlab eval runs/x/checkpoint.pt --no-corruptions\n"
               "  mixlab eval runs/x --max-corruption-images 1000 --device cuda\n"
               "  mixlab eval runs/x --data-root /data/cifar10-jpeg.zip     # the dataset moved since training\n"
               "  mixlab eval runs/x --no-wsol --effective-classes 100      # RecursiveMix Fig. 7's measure",
    )
    p.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="a run directory (its checkpoint.pt) or a checkpoint file")
    p.add_argument("--no-fgsm", dest="fgsm", action="store_false", help="skip the FGSM attack")
    p.add_argument("--no-corruptions", dest="corruptions", action="store_false",
                   help="skip the corruption accuracy (the slowest part)")
    p.add_argument("--max-corruption-images", type=_positive, metavar="N",
                   help="corruption accuracy on N test images only, evenly spread over the test set "
                        "(default: all)")
    p.add_argument("--no-ood", dest="ood", action="store_false",
                   help="skip the out-of-distribution detection (max softmax vs Gaussian and uniform noise images)")
    from mixlab.engine.eval_run import OOD_IMAGES

    p.add_argument("--ood-images", type=_positive, default=OOD_IMAGES, metavar="N",
                   help=f"images of each synthetic out-of-distribution set (default {OOD_IMAGES})")
    p.add_argument("--wsol", action=argparse.BooleanOptionalAction, default=None,
                   help="weakly supervised localization, MaxBoxAccV2 (default: when the test split has object "
                        "boxes; --wsol: required, an error without boxes; --no-wsol: skipped)")
    p.add_argument("--effective-classes", type=_non_negative, default=0, metavar="N",
                   help="also measure the effective class number of the run's first N training steps (the "
                        "average number of classes whose target weight exceeds 1e-4, RecursiveMix Fig. 7; "
                        "default 0: not measured)")
    p.add_argument("--batch-size", type=_positive, metavar="N",
                   help="evaluation batch size (default: the run's data.eval_batch_size)")
    p.add_argument("--device", default="auto", metavar="D",
                   help="auto (default: cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--data-root", metavar="PATH",
                   help="where the run's dataset is now, if it moved since training (replaces data.root)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_eval)


def _report(results: dict[str, Any]) -> None:
    """Print ``evaluate_checkpoint``'s results (plain weights, then the EMA's) and where they are."""
    from mixlab.evaluation import format_table

    ema = results.get("ema")
    if results.get("task", "classification") != "classification":  # mIoU / mAP
        for name, scores in (("weights", results["clean"]), ("EMA weights", ema)):
            if scores is not None:
                print(f"{name}: " + "  ".join(f"{k} {v:.2f}%" for k, v in scores.items() if k not in ("n", "iou"))
                      + f"  ({scores['n']} test images)")
        print(f"evaluation written to {results['eval_json']}")
        return
    print(("weights:\n" if ema else "") + format_table(results))
    if ema:
        print("EMA weights:\n" + format_table(ema))
    print(f"evaluation written to {results['eval_json']}")


def _eval(args: argparse.Namespace) -> int:
    from mixlab.engine.eval_run import evaluate_checkpoint

    results = evaluate_checkpoint(args.path, fgsm=args.fgsm, corruptions=args.corruptions,
                                  max_corruption_images=args.max_corruption_images, device=args.device,
                                  batch_size=args.batch_size, progress=args.progress, data_root=args.data_root,
                                  wsol=args.wsol, ood=args.ood, ood_images=args.ood_images,
                                  effective_classes=args.effective_classes)
    print(f"{results['checkpoint']} (epoch {results['epoch']}): {results['method']} | {results['model']} | "
          f"{results['dataset']} | {results['device']} | {results['seconds']:.1f}s")
    _report(results)
    return 0


# ------------------------------------------------------------------------------------------ transfer
def _add_transfer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transfer",
        help="fine-tune a classification run's backbone for segmentation or detection: mIoU / mAP",
        formatter_class=_Formatter,
        description="Build a segmenter (an FPN head) or a detector (FCOS) on the backbone of a classification "
                    "run, load the run's weights into it (classifier excepted), fine-tune the whole model on the "
                    "task's data (default: the synthetic shapes in a low-data regime, a few minutes on a CPU) and "
                    "evaluate it (eval.json). The run directory is <RUN>/transfer-<task> unless --out is given. "
                    "The papers' downstream experiments (RecursiveMix Tables 7-9, AutoMix Table 7, CropMix "
                    "Table 3); see docs/guide/dense.md.",
        epilog="examples:\n"
               "  mixlab transfer runs/cutmix-resnet_small-synthetic-20250101-120000 --task detection\n"
               "  mixlab transfer runs/x --task segmentation --epochs 30 --method cutmix\n"
               "  mixlab transfer runs/x --task segmentation --set data.name=voc --set data.root=/data/voc "
               "--set data.image_size=256")
    p.add_argument("run", metavar="RUN", help="a classification run directory or checkpoint file")
    p.add_argument("--task", required=True, choices=("segmentation", "detection"), help="the downstream task")
    p.add_argument("--method", metavar="NAME", help="the fine-tuning's method (default vanilla)")
    p.add_argument("--epochs", type=int, metavar="N", help="fine-tuning epochs (optim.epochs)")
    p.add_argument("--lr", type=float, metavar="X", help="peak learning rate (optim.lr)")
    p.add_argument("--seed", type=int, metavar="N", help="seed (default: the run's)")
    p.add_argument("--out", metavar="DIR", help="run directory (default <RUN>/transfer-<task>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key of the fine-tuning, dotted; repeatable")
    p.add_argument("--no-eval", dest="eval", action="store_false", help="do not write eval.json after training")
    p.set_defaults(func=_transfer)


def _transfer(args: argparse.Namespace) -> int:
    from mixlab.engine.eval_run import evaluate_checkpoint
    from mixlab.engine.transfer import transfer

    flags = {"method": "method.name", "epochs": "optim.epochs", "lr": "optim.lr", "seed": "run.seed", "out": "run.out"}
    values = {key: getattr(args, flag) for flag, key in flags.items() if getattr(args, flag) is not None}
    metrics = transfer(args.run, args.task, args.overrides, values)
    print(f"run directory: {metrics['run_dir']}")
    if args.eval:
        _report(evaluate_checkpoint(metrics["checkpoint"], fgsm=False, corruptions=False, progress=False))
    return 0


# ------------------------------------------------------------------------------------------ probe
def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="linear probe of a run's frozen backbone: top-1 and corruption robustness",
        formatter_class=_Formatter,
        description="Freeze the backbone of a run's checkpoint (self-supervised or supervised), train a linear "
                    "classifier on its pooled features of the run's training split (SGD with momentum, no weight "
                    "decay, cosine decay; features standardised by their training statistics, which are then "
                    "folded into the classifier), and evaluate the probed model on the run's test split: clean "
                    "top-1 / top-5 / NLL / calibration and top-1 under each corruption at severities 1-5 (mCA).\n\n"
                    "Without --augment the features are extracted once and cached (seconds on a CPU); with "
                    "--augment every epoch runs the backbone over random resized crops and flips (MoCo v3's full "
                    "protocol, one pass over the training set per epoch). Writes probe.json and probe.pt (the "
                    "probed model's weights) next to the checkpoint.",
        epilog="examples:\n"
               "  mixlab probe runs/mocov3-resnet18-cifar10-20250101-120000\n"
               "  mixlab probe runs/x/checkpoint.pt --epochs 30 --no-corruptions\n"
               "  mixlab probe runs/x --augment --epochs 90 --device cuda --max-corruption-images 1000\n"
               "  mixlab probe runs/x --lr 0.5 --batch-size 1024 --seed 1 --data-root /data/cifar10",
    )
    from mixlab.engine.probe import linear_probe

    d = _defaults(linear_probe)
    p.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="a run directory (its checkpoint.pt) or a checkpoint file")
    p.add_argument("--epochs", type=_positive, default=d["epochs"], metavar="N",
                   help=f"epochs of the linear layer (default {d['epochs']})")
    p.add_argument("--lr", type=float, default=d["lr"], metavar="X",
                   help=f"peak learning rate (> 0), cosine decay to 0 (default {d['lr']:g})")
    p.add_argument("--batch-size", type=_positive, default=d["batch_size"], metavar="N",
                   help=f"mini-batch of the linear layer (default {d['batch_size']})")
    p.add_argument("--momentum", type=float, default=d["momentum"], metavar="X",
                   help=f"SGD momentum in [0, 1) (default {d['momentum']:g})")
    p.add_argument("--augment", action="store_true",
                   help="random resized crops (scale 0.08-1) and flips every epoch, through the frozen backbone "
                        "(slow); default: the test transform, features cached")
    p.add_argument("--no-corruptions", dest="corruptions", action="store_false",
                   help="skip the corruption accuracy of the probed model")
    p.add_argument("--max-corruption-images", type=_positive, metavar="N",
                   help="corruption accuracy on N test images only, evenly spread over the test set (default: all)")
    p.add_argument("--device", default="auto", metavar="D",
                   help="auto (default: cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=_non_negative, default=d["seed"], metavar="N",
                   help=f"seed of the initialisation, the mini-batch order and the augmentation (default {d['seed']})")
    p.add_argument("--data-root", metavar="PATH",
                   help="where the run's dataset is now, if it moved since training (replaces data.root)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_probe)


def _probe(args: argparse.Namespace) -> int:
    from mixlab.engine.probe import linear_probe

    results = linear_probe(args.path, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                           momentum=args.momentum, augment=args.augment, corruptions=args.corruptions,
                           max_corruption_images=args.max_corruption_images, device=args.device, seed=args.seed,
                           progress=args.progress, data_root=args.data_root)
    _report_probe(results)
    return 0


def _report_probe(results: dict[str, Any]) -> None:
    """Print ``linear_probe``'s results: header, probe top-1, the evaluation table, where it went."""
    from mixlab.evaluation import format_table

    probe = results["probe"]
    print(f"{results['checkpoint']} (epoch {results['epoch']}): {results['method']} | {results['model']} | "
          f"{results['dataset']} | {results['device']} | {results['seconds']:.1f}s")
    print(f"linear probe top-1 {results['clean']['top1']:.2f}% (train top-1 {results['train_acc1']:.2f}%; "
          f"{probe['epochs']} epochs on {probe['train_images']} images x {probe['feature_dim']} features"
          f"{', augmented' if probe['augment'] else ''})")
    print(format_table(results))
    print(f"probe written to {results['probe_json']} (weights {results['probe_weights']})")


# --------------------------------------------------------------------------------------- finetune
def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] (0.1 = 10 % of the labels), got {text}")
    return value


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a pre-trained run's backbone with a fraction of the labels",
        formatter_class=_Formatter,
        description="Start a classifier from a run's model weights (a fresh classifier head), train the whole "
                    "network with labels on a class-balanced FRACTION of the run's training images, and test it "
                    "on the run's test split: the semi-supervised evaluation of self-supervised pre-training "
                    "(1 % and 10 % of the labels). The fine-tuning is an ordinary training run in "
                    "<run dir>/finetune-<pct>pct/ (checkpoint, metrics.csv, curves.png; resumable) with its "
                    "summary in finetune.json; a finished one with the same settings is not redone.\n\n"
                    "Recipe: AdamW, one warm-up epoch, cosine to 0, random crop + flip, cross-entropy.",
        epilog="examples:\n"
               "  mixlab finetune runs/mocov2-resnet_small-imagefolder-20250101-120000 --fraction 0.01\n"
               "  mixlab finetune runs/x --fraction 0.1 --epochs 50 --lr 0.003 --set run.threads=1\n"
               "  mixlab finetune runs/x --optimizer sgd --lr 0.05 --weight-decay 5e-4 --method mixup",
    )
    from mixlab.engine.finetune import finetune

    d = _defaults(finetune)
    p.add_argument("path", metavar="RUN_OR_CHECKPOINT", help="a run directory (its checkpoint.pt) or a checkpoint file")
    p.add_argument("--fraction", type=_fraction, default=d["fraction"], metavar="F",
                   help=f"share of the labelled training images, in (0, 1] (default {d['fraction']:g})")
    p.add_argument("--epochs", type=_positive, default=d["epochs"], metavar="N",
                   help=f"fine-tuning epochs (default {d['epochs']})")
    p.add_argument("--lr", type=float, default=d["lr"], metavar="X", help=f"peak learning rate (default {d['lr']:g})")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default=d["optimizer"], help=f"default {d['optimizer']}")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"], metavar="X",
                   help=f"default {d['weight_decay']:g}")
    p.add_argument("--head-lr-scale", type=float, default=d["head_lr_scale"], metavar="X",
                   help=f"the fresh classifier's lr as a multiple of --lr (default {d['head_lr_scale']:g})")
    p.add_argument("--batch-size", type=_positive, default=d["batch_size"], metavar="N",
                   help=f"images per step, at most (default {d['batch_size']}; fewer when the labelled set is "
                        f"smaller)")
    p.add_argument("--method", default=d["method"], metavar="NAME",
                   help=f"training method of the fine-tuning (default {d['method']}: plain cross-entropy)")
    p.add_argument("--seed", type=_non_negative, metavar="N", help="seed (default: the pre-training run's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of the fine-tuning run (e.g. run.threads=1); repeatable")
    p.add_argument("--device", default="auto", metavar="D", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--data-root", metavar="PATH",
                   help="where the run's dataset is now, if it moved since training (replaces data.root)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    from mixlab.engine.finetune import finetune

    r = finetune(args.path, fraction=args.fraction, epochs=args.epochs, lr=args.lr, optimizer=args.optimizer,
                 weight_decay=args.weight_decay, head_lr_scale=args.head_lr_scale, batch_size=args.batch_size,
                 method=args.method, seed=args.seed,
                 device=args.device, progress=args.progress, data_root=args.data_root, overrides=args.overrides)
    print(f"fine-tuned {r['checkpoint']} (epoch {r['pretrain_epoch']}) with {100 * r['fraction']:g} % of the labels "
          f"({r['per_class']} per class, {r['train_images']} images, {r['epochs']} epochs): test top-1 "
          f"{r['top1']:.2f}%, top-5 {r['top5']:.2f}%, nll {r['nll']:.3f} ({r['seconds']:.1f}s)")
    print(f"run directory {r['run_dir']}; summary {r['finetune_json']}")
    return 0


# ------------------------------------------------------------------------------------------- show
def _add_show(sub: argparse._SubParsersAction) -> None:
    from mixlab.registry import METHODS

    p = sub.add_parser(
        "show",
        help="draw what a mixing method does to a batch (PNG)",
        formatter_class=_Formatter,
        description="Mix one batch with a method and draw it: row 1 the inputs, row 2 their partners "
                    "(inputs[index]), row 3 the mask (per-pixel weight of the own image, black 0 .. white 1; a "
                    "flat grey tile at lambda for global mixes such as Mixup), row 4 the mixed images with their "
                    "top-2 soft label and lambda. A method that does not mix (vanilla) shows the inputs only. "
                    "With --checkpoint the model and the method's state (AutoMix's Mix Block) come from a run; "
                    "AutoMix draws its masks and mixed images at lambda 0.2, 0.5 and 0.8.\n\n"
                    "With --effective-classes N it draws nothing and prints instead the effective class number of "
                    "the method's targets (RecursiveMix, Fig. 7): the average number of classes whose target weight "
                    "exceeds 1e-4, over the first N training steps of the run `mixlab train` would start with the "
                    "same settings (batch size, data, seed), replayed without training, label smoothing off.",
        epilog=f"methods: {', '.join(METHODS)}\n\nexamples:\n"
               "  mixlab show --method cutmix\n"
               "  mixlab show --method mixup --set method.params.alpha=0.4 --n 6 --seed 3 --out mixup.png\n"
               "  mixlab show --method fmix --dataset imagefolder --data-root /path/to/cifar10-jpeg.zip\n"
               "  mixlab show --method cutmix --set method.params.granularity=elem --set data.image_size=64\n"
               "  mixlab show --method automix --checkpoint runs/<run dir>\n"
               "  mixlab show --method recursivemix --effective-classes 100   # about 4.5 (CutMix: 2 at most)",
    )
    p.add_argument("--method", required=True, metavar="NAME", help=f"the method to show: {', '.join(METHODS)}")
    p.add_argument("--dataset", metavar="NAME",
                   help="where the batch comes from: synthetic (default; with --checkpoint, the run's dataset), "
                        "cifar10, cifar100, imagefolder")
    p.add_argument("--data-root", metavar="PATH", help="dataset location (not needed for synthetic)")
    p.add_argument("--n", type=_positive, default=8, metavar="N", help="images in the batch, 2 to 32 (default 8)")
    p.add_argument("--seed", type=_non_negative, default=0, metavar="N",
                   help="seed of the images drawn and of the mixing (default 0)")
    p.add_argument("--out", metavar="FILE.png", help="the PNG to write (default runs/show/NAME.png)")
    p.add_argument("--checkpoint", metavar="RUN",
                   help="a run directory or checkpoint.pt of this method: its model, method state and config "
                        "(--set and the flags above still apply on top)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override as in `mixlab train` (method.params.alpha=0.4, method.label_smoothing=0.1, "
                        "data.image_size=64); repeatable")
    p.add_argument("--effective-classes", type=_positive, metavar="N",
                   help="print the effective class number of the method's targets over the first N training steps "
                        "(mean, then each step's) instead of drawing")
    p.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    from mixlab.engine.show import show_effective_classes, show_method

    if args.effective_classes:
        measured = show_effective_classes(args.method, steps=args.effective_classes, dataset=args.dataset,
                                          data_root=args.data_root, checkpoint=args.checkpoint,
                                          overrides=args.overrides)
        steps = measured.per_step.tolist()
        print(f"{args.method}: {measured.mean:.3f} effective classes per target over the first {len(steps)} training "
              f"steps ({measured.images} images; classes with weight > {measured.threshold:g}, label smoothing off)")
        for start in range(0, len(steps), 10):
            print(f"  steps {start + 1:>4}-{min(start + 10, len(steps)):<4} "
                  + " ".join(f"{v:5.2f}" for v in steps[start:start + 10]))
        return 0

    path, what = show_method(args.method, dataset=args.dataset, data_root=args.data_root, n=args.n, seed=args.seed,
                             out=args.out, checkpoint=args.checkpoint, overrides=args.overrides)
    print(f"{args.method}: {what}; wrote {path}")
    return 0


# ------------------------------------------------------------------------------------------- gallery
def _add_gallery(sub: argparse._SubParsersAction) -> None:
    from mixlab.engine.gallery import MIXED_VIEWS

    p = sub.add_parser(
        "gallery",
        help="draw every method on the same batch (PNGs and an index page)",
        formatter_class=_Formatter,
        description="Draw every mixing method on the same batch of synthetic images, as `mixlab show` does for "
                    "one (inputs, partners, masks, mixed images with their label weights), one PNG per method "
                    "plus index.md listing them: the documentation site's gallery. The self-supervised methods "
                    f"are drawn with their mixed views: {', '.join(MIXED_VIEWS)}.",
        epilog="examples:\n"
               "  mixlab gallery --out docs/gallery\n"
               "  mixlab gallery --out /tmp/gallery --methods mixup,cutmix --n 4",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write <method>.png and index.md into")
    p.add_argument("--methods", metavar="A,B,...", help="comma-separated names (default: every method)")
    p.add_argument("--n", type=_positive, default=8, metavar="N", help="images in the batch, 2 to 32 (default 8)")
    p.add_argument("--seed", type=_non_negative, default=0, metavar="N",
                   help="seed of the images drawn and of the mixing (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override given to every method (data.image_size=64); repeatable")
    p.set_defaults(func=_gallery)


def _gallery(args: argparse.Namespace) -> int:
    from mixlab.engine.gallery import build_gallery

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    entries = build_gallery(args.out, methods, n=args.n, seed=args.seed, overrides=args.overrides)
    for entry in entries:
        print(f"{entry.name}: {entry.what}; wrote {entry.path}")
    print(f"index {os.path.join(args.out, 'index.md')}")
    return 0


# -------------------------------------------------------------------------------------------- cam
def _indices(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated test image indices >= 0 (e.g. 3,17,42), "
                                         f"got {text!r}")
    return values


def _add_cam(sub: argparse._SubParsersAction) -> None:
    from mixlab.engine.cam import MAX_IMAGES, compare_cams

    d = _defaults(compare_cams)
    p = sub.add_parser(
        "cam",
        help="class activation maps of trained runs on the same images, side by side (PNG)",
        formatter_class=_Formatter,
        description="Draw the class activation maps of one or more trained runs on the same test images (those of "
                    "the first run's test split, with its test transform), as in RecursiveMix Fig. 6 and AutoMix "
                    "Fig. 3: one row per image, the image with its true class, then for every run its top-k maps "
                    "overlaid (jet, min-max scaled per map) with the class names and the run's probabilities "
                    "(green: the true class). CAM (Zhou et al. 2016: the classifier weights on the final feature "
                    "map) for models whose head is global average pooling + one linear layer (the CIFAR ResNets, "
                    "WRN, timm CNNs with an average-pool head); Grad-CAM (Selvaraju et al. 2017) otherwise, on the "
                    "final feature map, or for ViTs on the patch tokens entering the last block. Maps are "
                    "upsampled bilinearly to the image size.",
        epilog="examples:\n"
               "  mixlab cam runs/bench/cifar10-quick/runs/{vanilla,mixup,cutmix,recursivemix}-s0\n"
               "  mixlab cam runs/a runs/b --images 4 --topk 3 --out cams.png\n"
               "  mixlab cam runs/a runs/b --indices 0,10,20 --device cuda",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (their checkpoint.pt) or checkpoint files")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--images", type=_positive, default=d["images"], metavar="N",
                       help=f"number of test images, spread over the classes, 1 to {MAX_IMAGES} (default "
                            f"{d['images']})")
    which.add_argument("--indices", type=_indices, metavar="I,J,...",
                       help="these test images instead (indices into the first run's test split)")
    p.add_argument("--topk", type=_positive, default=d["topk"], metavar="K",
                   help=f"maps per run and image: the K most probable classes (default {d['topk']})")
    p.add_argument("--out", metavar="FILE.png", help="the PNG to write (default runs/cam/<run names>.png)")
    p.add_argument("--device", default="auto", metavar="D", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--data-root", metavar="PATH",
                   help="where the runs' dataset is now, if it moved since training (replaces data.root)")
    p.set_defaults(func=_cam)


def _cam(args: argparse.Namespace) -> int:
    from mixlab.engine.cam import compare_cams

    path, outputs = compare_cams(args.runs, images=args.images, indices=args.indices, topk=args.topk, out=args.out,
                                 device=args.device, data_root=args.data_root)
    n = outputs[0][1].cams.shape[0]
    maps = ", ".join(f"{name}: {out.method}" + (" (patch tokens)" if out.layer == "tokens" else "")
                     for name, out in outputs)
    print(f"wrote {path}: {n} image(s) x {len(outputs)} run(s), top-{args.topk} maps ({maps})")
    return 0


# ------------------------------------------------------------------------------------------- list
_LISTS = ("methods", "models", "datasets")

# one line per dataset name of mixlab.data.DATASETS: (what it is, what --data-root must point to or None)
_DATASET_NOTES = {
    "synthetic": ("10 generated shapes on cluttered backgrounds, 32x32 by default (tests, demos, CPU runs)", None),
    "cifar10": ("CIFAR-10, 50 000 train / 10 000 test 32x32 images, 10 classes",
                "the folder holding cifar-10-batches-py"),
    "cifar100": ("CIFAR-100, 50 000 train / 10 000 test 32x32 images, 100 classes",
                 "the folder holding cifar-100-python"),
    "imagefolder": ("any <split>/<class>/<image> tree, decoded once and cached",
                    "a directory or .zip of <split>/<class>/<image>"),
    "tiny-imagenet": ("Tiny-ImageNet-200, 100 000 train / 10 000 labelled val (the test split) 64x64 images, "
                      "200 classes",
                      "tiny-imagenet-200.zip, the folder holding it, or the extracted tiny-imagenet-200"),
}


def _add_list(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "list",
        help="list the methods, models and datasets",
        formatter_class=_Formatter,
        description="List the registered names: methods (with their paper and default hyper-parameters, each "
                    "overridable with --set method.params.NAME=VALUE), models (with their parameter count at 10 "
                    "classes) and datasets (with what --data-root must point to).",
        epilog="examples:\n  mixlab list\n  mixlab list methods\n  mixlab list models",
    )
    p.add_argument("what", nargs="?", choices=_LISTS, metavar="{methods,models,datasets}",
                   help="what to list (default: all three)")
    p.set_defaults(func=_list)


def _parameter_count(name: str, num_classes: int = 10) -> int:
    """Parameters of model ``name``, built on the meta device (no memory, no initialisation)."""
    import torch

    from mixlab.models import count_parameters, create_model

    with torch.device("meta"):
        return count_parameters(create_model(name, num_classes=num_classes))


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n", 1)[0].replace("``", "")


def _list(args: argparse.Namespace) -> int:
    from mixlab.registry import METHODS

    what = [args.what] if args.what else list(_LISTS)
    blocks = []
    if "methods" in what:
        lines = ["methods (mixlab train --method NAME; --set method.params.NAME=VALUE):"]
        width = max(map(len, METHODS))
        for name, spec in METHODS.items():
            defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults.items()) or "no hyper-parameters"
            options = f"; options: {', '.join(spec.options)}" if spec.options else ""
            lines += [f"  {name:<{width}}  {spec.description}",
                      f"  {'':<{width}}  paper: {spec.paper}",
                      f"  {'':<{width}}  defaults: {defaults}{options}"]
        blocks.append("\n".join(lines))
    if "models" in what:
        from mixlab.models import MODELS

        lines = ["models (mixlab train --model NAME; parameters at 10 classes):"]
        width = max(len("timm:<name>"), *map(len, MODELS))
        for name, build in MODELS.items():
            lines.append(f"  {name:<{width}}  {_parameter_count(name) / 1e6:6.2f}M  {_first_line(build.__doc__)}")
        lines.append(f"  {'timm:<name>':<{width}}  {'':>7}  any timm model by name, e.g. timm:resnet18 (random init)")
        blocks.append("\n".join(lines))
    if "datasets" in what:
        from mixlab.data import DATASETS

        lines = ["datasets (mixlab train --dataset NAME [--data-root PATH]):"]
        width = max(map(len, DATASETS))
        for name in DATASETS:
            description, root = _DATASET_NOTES.get(name, ("", "see mixlab.data.DATASETS"))
            lines += [f"  {name:<{width}}  {description}",
                      f"  {'':<{width}}  --data-root: {root or 'not needed'}"]
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixlab", formatter_class=_Formatter,
        description="Mixing data augmentation for vision training (Mixup, CutMix, ResizeMix, FMix, SaliencyMix, "
                    "...): train with a method, evaluate a run's accuracy, calibration and robustness, and see "
                    "what a method does to a batch.",
        epilog="examples:\n"
               "  mixlab train                          # the default run: CutMix, small ResNet, synthetic shapes\n"
               "  mixlab train --method mixup --epochs 30\n"
               "  mixlab eval runs/<run dir>            # eval.json: clean, calibration, FGSM, corruptions\n"
               "  mixlab show --method fmix             # runs/show/fmix.png: inputs, partners, masks, mixed\n"
               "  mixlab gallery --out docs/gallery     # every method on the same batch (the docs' gallery)\n"
               "  mixlab cam runs/<run a> runs/<run b>  # runs/cam/a+b.png: the runs' CAMs on the same images\n"
               "  mixlab list methods\n\n"
               "`mixlab COMMAND --help` describes each command.")
    parser.add_argument("--version", action="version", version=f"mixlab {mixlab.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_pretrain(sub)
    _add_eval(sub)
    _add_probe(sub)
    _add_finetune(sub)
    _add_transfer(sub)
    _add_show(sub)
    _add_gallery(sub)
    _add_cam(sub)
    _add_list(sub)
    from mixlab.bench import command as bench_command

    bench_command.add_parser(sub)  # `mixlab bench`, defined with the benchmark suite
    return parser


def _unrecognized(extras: list[str], command: str | None, argv: list[str]) -> str:
    """argparse's "unrecognized arguments" message, with where settings without a flag go."""
    text = f"unrecognized arguments: {' '.join(extras)}"
    if command in ("train", "pretrain", "show", "finetune"):
        from mixlab.engine.config import resolve_key

        flag = next((e for e in extras if e.startswith("--")), None)
        name, _, value = flag[2:].partition("=") if flag else ("", "", "")
        at = argv.index(flag) if flag in argv else len(argv)  # its value may have been taken for CONFIG.yaml
        if not value and at + 1 < len(argv) and not argv[at + 1].startswith("-"):
            value = argv[at + 1]
        key = resolve_key(name.replace("-", "_")) if name else None  # --learning-rate: optim.lr
        example = f"--set {key}={value or 'VALUE'}" if key else "--set optim.lr=0.1"
        return (f"{text}; settings without a flag go through --set key=value, e.g. {example}; "
                f"see mixlab {command} --help")
    return f"{text}; see mixlab {command + ' ' if command else ''}--help"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mixlab`` script; returns the exit status (2 for usage/input errors)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extras = parser.parse_known_args(argv)
    if extras:
        parser.error(_unrecognized(extras, args.command, argv))
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError; OSError: paths, a full disk
        print(f"mixlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # the training diverged (TrainingDivergedError)
        print(f"mixlab {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mixlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
