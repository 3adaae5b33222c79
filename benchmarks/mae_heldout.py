"""Held-out reconstruction loss of MAE runs: the masked-patch loss (normalised pixels, removed
patches only) of each run's checkpoint on the same un-augmented test images, under the same masks
(a generator seeded 0), next to the untrained model's. Training losses of RRC and CropMix runs are
measured on different inputs; this compares them on one.

    mixlab pretrain --framework mae --epochs 10 --batch-size 64 --set data.num_per_class=200 --no-probe --out runs/rrc
    mixlab pretrain --framework mae --cropmix ... --out runs/cropmix
    python benchmarks/mae_heldout.py runs/rrc runs/cropmix          # each run's own model and method settings
"""

from __future__ import annotations

import argparse

import torch

from mixlab import registry
from mixlab.data import normalize_on_device
from mixlab.engine.checkpoint import load_checkpoint
from mixlab.engine.config import config_from_dict
from mixlab.ssl.mae import masked_mse, patch_targets


def heldout_loss(run: str | None, cfg, images: torch.Tensor, batch: int = 250) -> float:
    """Mean masked-patch loss of ``run`` (``None``: the untrained model of ``cfg``) on ``images``."""
    torch.manual_seed(0)
    model = registry.build_model(cfg.model.name, 10, **cfg.model.kwargs)
    method = registry.build_method("mae", 10, **cfg.method.params)
    method.setup(model, torch.Generator().manual_seed(0))
    if run is not None:
        ckpt = load_checkpoint(run)
        model.load_state_dict(ckpt["model"])
        method.load_state_dict(ckpt["method"])
    model.eval()
    g = torch.Generator().manual_seed(0)  # the same masks for every run
    total = 0.0
    with torch.no_grad():
        for x in images.split(batch):
            pred, mask = method.forward_mae(model, x, g)
            total += float(masked_mse(pred, patch_targets(x, method.patch_size, method.norm_pix_loss), mask)) * len(x)
    return total / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories (or checkpoints) of `mixlab pretrain --framework mae`")
    args = parser.parse_args()
    cfg = config_from_dict(load_checkpoint(args.runs[0])["config"])
    d = cfg.data
    kwargs = {"num_per_class": d.test_per_class, "image_size": d.image_size, "seed": cfg.run.seed} \
        if d.name == "synthetic" else {}
    test = registry.build_dataset(d.name, "test", root=d.root, **kwargs)
    if test.is_lazy:
        raise SystemExit("folders of mixed image sizes are not supported here")
    images = normalize_on_device(test.images, test.mean, test.std)
    print(f"untrained: {heldout_loss(None, cfg, images):.4f}")
    for run in args.runs:
        run_cfg = config_from_dict(load_checkpoint(run)["config"])
        print(f"{run}: {heldout_loss(run, run_cfg, images):.4f}")


if __name__ == "__main__":
    main()
