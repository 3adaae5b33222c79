"""Speed of every mixer against a memory-copy floor and against timm / torchvision, in one run.

    python benchmarks/mixers.py [--repeats 30] [--threads 2] [--device cpu]

For B=128×3×32×32 and B=32×3×224×224 float32, prints the median time of each mixer, its ratio to
``batch.clone()`` (the cost of touching the batch once) measured in the same run, and timm's
``Mixup`` and torchvision v2's ``MixUp``/``CutMix`` on the same batches, each next to mixlab set
to the same λ granularity and pairing (timm: one λ per batch, flip pairing, in place;
torchvision: one λ per batch, roll pairing, out of place), and ``mixlab.TimmMixup`` (timm's
arguments) next to timm's ``Mixup`` in batch and per-element modes. Every mixer is built once,
before timing. Ends with the issue's targets, checked. Rows a given mixlab version lacks are
skipped (so the script also times older checkouts).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

import mixlab


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median ms of each function, timed round-robin (A, B, C, A, B, C, ...) so that machine load
    and allocator state drift affect every candidate alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def run_size(shape: tuple[int, ...], k: int, repeats: int, device: str) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g).to(device)
    y = torch.randint(0, k, (shape[0],), generator=g).to(device)
    fns: dict[str, Callable[[], object]] = {}

    def add(name: str, fn: Callable[[], object]) -> None:
        fns[name] = fn

    add("clone (floor)", lambda: x.clone())
    gen = torch.Generator().manual_seed(1)
    ours = {
        "mixlab Mixup (batch, roll)": mixlab.Mixup(k, generator=gen),
        "mixlab Mixup (elem, roll)": mixlab.Mixup(k, granularity="elem", generator=gen),
        "mixlab CutMix (batch, roll)": mixlab.CutMix(k, generator=gen),
        "mixlab CutMix (elem, roll)": mixlab.CutMix(k, granularity="elem", generator=gen),
        "mixlab ResizeMix (batch)": mixlab.ResizeMix(k, generator=gen),
        "mixlab ResizeMix (elem)": mixlab.ResizeMix(k, granularity="elem", generator=gen),
        "mixlab FMix (elem)": mixlab.FMix(k, granularity="elem", generator=gen),
        "mixlab SaliencyMix (elem)": mixlab.SaliencyMix(k, granularity="elem", generator=gen),
        "mixlab RandomChoice(Mixup|CutMix)": mixlab.RandomChoice(
            [mixlab.Mixup(k, alpha=0.8), mixlab.CutMix(k)], generator=gen
        ),
    }
    try:  # a per-image switch (mixlab >= the torchvision/timm conventions work)
        ours["mixlab RandomChoice(Mixup|CutMix) (elem)"] = mixlab.RandomChoice(
            [mixlab.Mixup(k, alpha=0.8, granularity="elem"), mixlab.CutMix(k, granularity="elem")],
            generator=gen, granularity="elem")
    except TypeError:
        pass
    for name, mixer in ours.items():
        add(name, lambda m=mixer: m(x, y))

    # --- against timm (one λ per batch, flip pairing, in place; elem mode loops over samples)
    try:
        from timm.data import Mixup as Timm

        xt = x.clone()
        timm_kw = {"mixup": dict(mixup_alpha=1.0, cutmix_alpha=0.0), "cutmix": dict(mixup_alpha=0.0, cutmix_alpha=1.0),
                   "switch": dict(mixup_alpha=0.8, cutmix_alpha=1.0)}
        tm, tc = Timm(**timm_kw["mixup"], num_classes=k), Timm(**timm_kw["cutmix"], num_classes=k)
        te = Timm(**timm_kw["mixup"], mode="elem", num_classes=k)
        ts = Timm(**timm_kw["switch"], mode="elem", num_classes=k)
        mm = mixlab.Mixup(k, pairing="flip", inplace=True, generator=gen)
        mc = mixlab.CutMix(k, pairing="flip", inplace=True, generator=gen)
        me = mixlab.Mixup(k, pairing="flip", granularity="elem", inplace=True, generator=gen)
        add("timm Mixup (batch)", lambda: tm(xt, y))
        add("mixlab Mixup (batch, flip, inplace)", lambda: mm(xt, y))
        add("timm CutMix (batch)", lambda: tc(xt, y))
        add("mixlab CutMix (batch, flip, inplace)", lambda: mc(xt, y))
        add("timm Mixup (elem)", lambda: te(xt, y))
        add("mixlab Mixup (elem, flip, inplace)", lambda: me(xt, y))
        add("timm Mixup|CutMix (elem)", lambda: ts(xt, y))
        if hasattr(mixlab, "TimmMixup"):
            ours_timm = {name: mixlab.TimmMixup(**kw, num_classes=k, generator=gen) for name, kw in timm_kw.items()}
            ours_elem = mixlab.TimmMixup(**timm_kw["switch"], mode="elem", num_classes=k, generator=gen)
            add("mixlab TimmMixup (batch, Mixup)", lambda: ours_timm["mixup"](xt, y))
            add("mixlab TimmMixup (batch, CutMix)", lambda: ours_timm["cutmix"](xt, y))
            add("mixlab TimmMixup (elem, Mixup|CutMix)", lambda: ours_elem(xt, y))
    except ImportError:
        print("timm not installed: skipping its rows")

    # --- against torchvision v2 (one λ per batch, roll pairing, out of place)
    try:
        from torchvision.transforms import v2

        vm, vc = v2.MixUp(alpha=1.0, num_classes=k), v2.CutMix(alpha=1.0, num_classes=k)
        add("torchvision MixUp", lambda: vm(x, y))
        add("torchvision CutMix", lambda: vc(x, y))
    except ImportError:
        print("torchvision not installed: skipping its rows")
    return interleaved_medians(fns, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, median of {args.repeats}")
    checks: list[tuple[str, bool]] = []
    others: list[str] = []
    for shape in [(128, 3, 32, 32), (32, 3, 224, 224)]:
        rows = run_size(shape, 10, args.repeats, args.device)
        floor = rows["clone (floor)"]
        print(f"\n### batch {'x'.join(map(str, shape))}\n")
        print("| mixer | median ms | × clone |\n|---|---:|---:|")
        for name, ms in rows.items():
            print(f"| {name} | {ms:.3f} | {ms / floor:.2f} |")
        tag = f"{shape[0]}x{shape[2]}²"
        if shape[-1] == 224:
            r = rows["mixlab Mixup (batch, roll)"] / floor
            checks.append((f"{tag}: Mixup ≤ 2.5× clone floor ({r:.2f}×)", r <= 2.5))
        # the targets: at 128x32² no slower than timm, at 224² faster than timm and torchvision
        # (like for like: timm's flip pairing in place; torchvision's roll pairing out of place)
        strict = shape[-1] == 224
        for a, b in [
            ("mixlab Mixup (batch, flip, inplace)", "timm Mixup (batch)"),
            ("mixlab CutMix (batch, flip, inplace)", "timm CutMix (batch)"),
            ("mixlab Mixup (batch, roll)", "torchvision MixUp"),
            ("mixlab CutMix (batch, roll)", "torchvision CutMix"),
        ]:
            if a in rows and b in rows:
                ok = rows[a] < rows[b] if strict else rows[a] <= rows[b]
                word = "faster than" if strict else "no slower than"
                checks.append((f"{tag}: {a} {word} {b} ({rows[b] / rows[a]:.2f}× speed-up)", ok))
        for a, b in [
            ("mixlab Mixup (batch, roll)", "timm Mixup (batch)"),
            ("mixlab CutMix (batch, roll)", "timm CutMix (batch)"),
            ("mixlab Mixup (elem, flip, inplace)", "timm Mixup (elem)"),
            ("mixlab TimmMixup (batch, Mixup)", "timm Mixup (batch)"),
            ("mixlab TimmMixup (batch, CutMix)", "timm CutMix (batch)"),
            ("mixlab TimmMixup (elem, Mixup|CutMix)", "timm Mixup|CutMix (elem)"),
            ("mixlab RandomChoice(Mixup|CutMix) (elem)", "timm Mixup|CutMix (elem)"),
        ]:
            if a in rows and b in rows:
                others.append(f"{tag}: {a} vs {b}: {rows[b] / rows[a]:.2f}× speed-up")
    print("\n### targets\n")
    for text, ok in checks:
        print(f"- [{'PASS' if ok else 'FAIL'}] {text}")
    print("\n### other comparisons (not targets)\n")
    for text in others:
        print(f"- {text}")


if __name__ == "__main__":
    main()
