"""``mixlab`` command line: argument parsing only, the work happens in :mod:`mixlab.engine`.

    mixlab train                                  # the default run: CutMix, resnet_small, synthetic shapes
    mixlab train my.yaml --set optim.lr=0.05 --epochs 30
    mixlab train --method mixup --model resnet18 --dataset imagefolder --data-root ../shared/data/cifar10-jpeg.zip
    mixlab train --resume runs/cutmix-resnet_small-synthetic-20250101-120000
    mixlab --version
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import mixlab

__all__ = ["main", "build_parser"]

# flag -> config key; the flags are shorthands for --set KEY=VALUE
_TRAIN_FLAGS = {
    "method": "method.name",
    "model": "model.name",
    "dataset": "data.name",
    "data_root": "data.root",
    "epochs": "optim.epochs",
    "batch_size": "data.batch_size",
    "lr": "optim.lr",
    "seed": "run.seed",
    "train_per_class": "data.train_per_class",
    "workers": "data.num_workers",
    "out": "run.out",
}


def _add_train(sub: argparse._SubParsersAction) -> None:
    from mixlab.registry import METHODS

    methods = "\n".join(f"  {name:<13} {spec.description}" for name, spec in METHODS.items())
    p = sub.add_parser(
        "train",
        help="train a classifier with a mixing method",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a model with a mixing method and write a run directory: metrics.csv, metrics.jsonl, "
                    "checkpoint.pt (every epoch), curves.png, samples.png, config.yaml.\n\n"
                    "Settings come from the defaults, then CONFIG.yaml, then --set, then the flags below.\n"
                    "With no arguments this is the README's default run (a few minutes on a laptop CPU).",
        epilog=f"methods:\n{methods}\n\nexamples:\n"
               "  mixlab train --method mixup --epochs 30 --set method.params.alpha=0.4\n"
               "  mixlab train --model resnet18 --dataset imagefolder --data-root ../shared/data/cifar10-jpeg.zip\n"
               "  mixlab train --resume runs/<run dir> --epochs 40     # continue, with a longer schedule",
    )
    p.add_argument("config", nargs="?", metavar="CONFIG.yaml",
                   help="YAML file with sections data/model/optim/method/run (see mixlab/configs/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, dotted, value parsed as YAML; repeatable "
                        "(e.g. --set optim.lr=0.05 --set method.params.alpha=0.4 --set run.progress=false)")
    p.add_argument("--method", metavar="NAME", help=f"training method: {', '.join(METHODS)} (default cutmix)")
    p.add_argument("--model", metavar="NAME",
                   help="model: resnet18, resnet34, preactresnet18, resnet_small, wrn28_2, wrn28_10, "
                        "vit_tiny_patch4 or timm:<name> (default resnet_small)")
    p.add_argument("--dataset", metavar="NAME",
                   help="dataset: synthetic, cifar10, cifar100, imagefolder (default synthetic)")
    p.add_argument("--data-root", metavar="PATH", help="dataset location: a directory, or a .zip for imagefolder")
    p.add_argument("--epochs", type=int, metavar="N", help="number of epochs (>= 1)")
    p.add_argument("--batch-size", type=int, metavar="N", help="training batch size (>= 2)")
    p.add_argument("--lr", type=float, metavar="X", help="peak learning rate (> 0) of the main parameter groups")
    p.add_argument("--seed", type=int, metavar="N", help="run seed (>= 0); the rank is added to it")
    p.add_argument("--train-per-class", type=int, metavar="N",
                   help="train on a class-balanced subset of N images per class")
    p.add_argument("--workers", type=int, metavar="N",
                   help="DataLoader worker processes (0 = load in the main process)")
    p.add_argument("--out", metavar="DIR",
                   help="run directory (default runs/<method>-<model>-<dataset>-<timestamp>; "
                        "the checkpoint's directory when resuming)")
    p.add_argument("--resume", metavar="PATH",
                   help="continue from a checkpoint file or a run directory; its config is the starting point, "
                        "CONFIG.yaml/--set/flags given here change it")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from mixlab.engine import load_config, train
    from mixlab.engine.checkpoint import load_checkpoint
    from mixlab.engine.config import config_from_dict

    values = {key: getattr(args, flag) for flag, key in _TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    base = None
    if args.resume:
        base = config_from_dict(load_checkpoint(args.resume)["config"], source=f"checkpoint {args.resume}")
        base.run.out, base.run.stop_epoch = None, None  # continue in the checkpoint's directory, to the end
        values["run.resume"] = args.resume
    cfg = load_config(args.config, args.overrides, base=base, values=values)
    metrics = train(cfg)
    nan = float("nan")
    print(f"final test accuracy: {metrics.get('test_acc1', nan):.2f}% (top-5 {metrics.get('test_acc5', nan):.2f}%)")
    print(f"run directory: {metrics['run_dir']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixlab", description="Mixing data augmentation for vision training (Mixup, CutMix, ...).")
    parser.add_argument("--version", action="version", version=f"mixlab {mixlab.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mixlab`` script; returns the exit status (2 for usage/input errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError; OSError: paths
        print(f"mixlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mixlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
