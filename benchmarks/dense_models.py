"""Training-step cost of the dense tasks' models on the synthetic shapes, in one interleaved run.

    python benchmarks/dense_models.py [--repeats 5] [--threads 1]

One optimizer step (forward, loss, backward, SGD) of each segmentation model on 32 images of 32x32
(the ``synthetic-seg-quick`` batch) and each detector on 16 images of 64x64 with up to 3 shapes
(``synthetic-det-quick``'s), all with random weights: mixlab's backbone models
(:mod:`mixlab.models.dense`: the FPN segmenter and FCOS on ``resnet_small``, FCOS also with
torchvision's 3 pyramid levels and 4 head convolutions) against torchvision's mobile models
(LR-ASPP MobileNetV3-Large, Faster R-CNN MobileNetV3-Large 320 FPN). Prints the median seconds per
step, the parameters, and each model's ratio to the first of its task, timed round-robin
(:func:`mixers.interleaved_medians`) so that load drift affects every model alike.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mixers import interleaved_medians  # noqa: E402 - the timing loop every benchmark here shares

from mixlab.data import SyntheticShapes  # noqa: E402
from mixlab.models.dense import build_dense_model  # noqa: E402


def _step(model: torch.nn.Module, loss_fn) -> callable:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)

    def step() -> None:
        loss = loss_fn(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    seg = SyntheticShapes("train", num_per_class=4, image_size=32).segmentation()
    x, y = seg.images[:32].float() / 255, seg.masks[:32].long()
    det = SyntheticShapes("train", num_per_class=2, image_size=64, objects=3).detection(with_masks=False)
    images, targets = [det[i][0].float() / 255 for i in range(16)], [det[i][1] for i in range(16)]
    tasks = {
        "segmentation, 32 x 32x32": {
            "FPN segmenter on resnet_small": build_dense_model("segmentation", "resnet_small", 11, image_size=32),
            "lraspp_mobilenet_v3_large": build_dense_model("segmentation", "lraspp_mobilenet_v3_large", 11,
                                                           image_size=32)},
        "detection, 16 x 64x64": {
            "FCOS on resnet_small (2 levels, 2 head convs)": build_dense_model("detection", "resnet_small", 11,
                                                                              image_size=64),
            "FCOS on resnet_small (3 levels, 4 head convs)": build_dense_model("detection", "resnet_small", 11,
                                                                              image_size=64, levels=3, head_convs=4),
            "fasterrcnn_mobilenet_v3_large_320_fpn": build_dense_model(
                "detection", "fasterrcnn_mobilenet_v3_large_320_fpn", 11, image_size=64)},
    }
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} steps")
    for task, models in tasks.items():
        if task.startswith("segmentation"):
            loss = lambda m: torch.nn.functional.cross_entropy(m(x), y, ignore_index=255)  # noqa: E731
        else:
            loss = lambda m: sum(m(images, targets).values())  # noqa: E731
        fns = {name: _step(model.train(), loss) for name, model in models.items()}
        ms = interleaved_medians(fns, args.repeats, warmup=1)
        first = next(iter(ms.values()))
        print(f"\n{task}:")
        for name, model in models.items():
            params = sum(p.numel() for p in model.parameters()) / 1e6
            print(f"  {name:48s} {params:5.2f} M params  {ms[name] / 1e3:6.3f} s/step  {ms[name] / first:5.2f}x")


if __name__ == "__main__":
    main()
