"""One command that measures every method on a device: step time, images/s, peak memory, compiled
or not, and the data loader's bound; prints a markdown table and writes it to ``docs/benchmarks/``.

For each method (default: every registered one, the classification methods and the
self-supervised frameworks), the run that ``mixlab train --method NAME`` (or ``mixlab pretrain
--framework NAME``) would set up (:func:`mixlab.engine.loop.setup`: the model in channels_last,
AMP as ``run.amp=auto`` picks it, the method's optimizer groups) is built on the same data, and:

* **loader**: images/s of the run's own train loader alone (``engine.data``: ``--workers``
  processes, the method's per-image transform: CropMix's crops, the self-supervised views, the
  standard crop + flip otherwise), after the workers have started;
* **step**: a batch of that loader on the device; the loop's :func:`~mixlab.engine.loop.step`
  (lr, ``train_step``: the method's loss, backward, optimizer, the method's update) timed over
  windows of ``--steps`` steps with CUDA events after a synchronisation (``time.perf_counter`` on
  the CPU). All runs are set up first, then ``--windows`` rounds give each run one window in turn
  (``--warmup`` untimed steps before its first, 1 before the others), so that load from other
  processes hits every method alike; the median window is reported;
* **peak memory**: the run's resident CUDA memory (what its setup, its batch and its first steps
  leave allocated: weights, gradients, optimizer and method state) plus the largest rise of
  ``torch.cuda.max_memory_allocated`` above the allocation at a window's start (the peak stats
  are reset before each window): the peak of the run alone, though all runs stay resident;
* **compiled** (``--compile [NAMES]``): the same with the engine's ``run.compile`` step module (the
  :class:`~mixlab.engine.distributed.StepModule` that runs ``method.training_step``, compiled with
  ``nn.Module.compile``; compilation happens in the first warm-up).

Ratios are against ``vanilla`` and ``mixup`` (always measured). Classification methods train
``--model`` (default the CIFAR ResNet-18 at 32x32; ``--model timm:resnet50 --image-size 224`` for
the ImageNet setting, with ``--dataset imagefolder --data-root`` for a realistic loader), the
self-supervised ones their own views (two crops for MoCo, DINO's multi-crop) and MAE its ViT.

    python benchmarks/gpu.py                                    # every method, ResNet-18, 32x32, batch 128
    python benchmarks/gpu.py --compile                          # ... also compiled
    python benchmarks/gpu.py --model timm:resnet50 --image-size 224 --batch-size 64 \\
        --dataset imagefolder --data-root /data/imagenet-subset.zip --workers 12
    python benchmarks/gpu.py --device cpu --model resnet_small --batch-size 32 --steps 3   # labelled CPU

Without CUDA, ``--device cpu`` is required, and the file is ``docs/benchmarks/cpu-<cpu>.md``: a
CPU table is never labelled as a GPU's.
"""

from __future__ import annotations

import argparse
import gc
import platform
import re
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import torch

from mixlab import registry
from mixlab.engine.config import TrainConfig, config_to_dict
from mixlab.engine.data import load_datasets
from mixlab.engine.distributed import DistInfo, StepModule
from mixlab.engine.loop import State, setup, step
from mixlab.engine.presets import pretrain_config, run_config

REFERENCES = ("vanilla", "mixup")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


@dataclass
class Timing:
    """One variant (eager or compiled) of one method."""

    windows: list[float] = field(default_factory=list)  # ms per step of each timed window
    transient: float = 0.0  # CUDA: the largest rise of allocated bytes within a window
    error: str | None = None

    @property
    def ms(self) -> float | None:
        return statistics.median(self.windows) if self.windows and self.error is None else None


@dataclass
class Row:
    """Everything measured for one method."""

    name: str
    model: str = ""
    batch: int = 0  # images per step
    inputs: str = ""
    loader: float | None = None  # images/s of the train loader alone
    eager: Timing = field(default_factory=Timing)
    compiled: Timing | None = None  # not asked for
    resident: float = 0.0  # CUDA: bytes the run keeps allocated (weights, optimizer and method state, batch)
    amp: str = ""  # the autocast dtype of the run ("" without)
    error: str | None = None  # the run could not be set up

    def peak_mib(self, timing: Timing | None, device: torch.device) -> float | None:
        """The run's peak CUDA memory: resident + the variant's largest step transient."""
        if device.type != "cuda" or timing is None or timing.ms is None:
            return None
        return (self.resident + timing.transient) / 2**20


@dataclass
class Run:
    """A method's run, set up and kept while the rounds of windows go over all of them."""

    row: Row
    state: State
    batch: Any
    variants: dict[str, Any]  # variant ("eager", "compiled") -> the step module the loop's step calls
    warm: set[str] = field(default_factory=set)  # variants past their first warm-up


# ---------------------------------------------------------------------------------------- the runs
def method_config(name: str, args: argparse.Namespace) -> TrainConfig:
    """The config ``mixlab train --method name`` (``mixlab pretrain --framework name`` for a
    self-supervised method) would run with, at the benchmark's batch, image size, data and device;
    a method that brings its own model (MAE's ViT) keeps it."""
    values: dict[str, Any] = {
        "data.name": args.dataset, "data.root": args.data_root, "data.batch_size": args.batch_size,
        "data.image_size": args.image_size, "data.num_workers": args.workers, "data.test_per_class": 1,
        "data.num_per_class": -(-args.train_images // 10), "run.device": args.device, "run.threads": args.threads,
        "run.progress": False, "run.tensorboard": False}
    if "model" not in registry.METHODS[name].config:
        values["model.name"] = args.model
    if registry.is_self_supervised(name):
        return pretrain_config(None, values=values, framework=name)
    return run_config(None, values={**values, "method.name": name})


def describe_inputs(batch: Any) -> str:
    """``128x3x32²`` for a batch of images, ``2x32² + 6x16²`` for views (with the batch size)."""
    images, _ = batch
    if isinstance(images, torch.Tensor):
        b, c, h, w = images.shape
        return f"{b}x{c}x{h}²" if h == w else f"{b}x{c}x{h}x{w}"
    sizes: dict[str, int] = {}
    for view in images:
        h, w = view.shape[-2:]
        key = f"{h}²" if h == w else f"{h}x{w}"
        sizes[key] = sizes.get(key, 0) + 1
    return f"{images[0].shape[0]} x (" + " + ".join(f"{n}x{s}" for s, n in sizes.items()) + ")"


def loader_rate(state: State, batches: int, warmup: int) -> tuple[float | None, Any]:
    """Images/s of ``state``'s train loader over ``batches`` batches after ``warmup`` (workers
    starting), and its first batch."""
    data, size = state.data, state.cfg.data.batch_size
    first, seen, t0, epoch = None, 0, 0.0, 0
    while True:
        data.sampler.set_epoch(epoch)
        for batch in data.train_loader:
            first = batch if first is None else first
            seen += 1
            if seen == warmup:
                t0 = time.perf_counter()
            if batches == 0 or seen == warmup + batches:
                return (batches * size / (time.perf_counter() - t0) if batches else None), first
        epoch += 1


def allocated(device: torch.device) -> int:
    """Bytes of CUDA memory in tensors now (0 on the CPU), after the queued work."""
    if device.type != "cuda":
        return 0
    torch.cuda.synchronize(device)
    return torch.cuda.memory_allocated(device)


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"


def prepare(name: str, args: argparse.Namespace, info: DistInfo, splits: dict[str, Any]) -> Row | Run:
    """The run of ``name`` set up (on the data every method shares), its loader measured, a batch
    of it on the device; the compiled variant prepared when asked (a second step module, compiled as
    ``run.compile`` does). A :class:`Row` with
    the error when it cannot be set up."""
    row = Row(name)
    try:
        cfg = method_config(name, args)
        key = repr((config_to_dict(cfg)["data"], cfg.run.seed))
        if key not in splits:  # the same images for every method
            splits[key] = load_datasets(cfg, info)
        before = allocated(info.device)
        state = setup(cfg, info, splits[key])
        row.model, row.batch = cfg.model.name, cfg.data.batch_size
        row.amp = str(state.amp_dtype).removeprefix("torch.") if state.amp_dtype is not None else ""
        row.loader, first = loader_rate(state, args.loader_batches, max(1, args.workers))
        batch = state.data.train_inputs(first)  # on the device path (data.device_augment), augmented there
        row.resident = allocated(info.device) - before
        row.inputs = describe_inputs(batch)
        state.step = state.total_steps // 2  # mid-schedule: progress 0.5 for every step timed
    except Exception as e:  # noqa: BLE001 - reported in the table, the other methods go on
        traceback.print_exc()
        row.error = error_text(e)
        return row
    variants: dict[str, Any] = {"eager": state.step_module}
    if args.compile is not None and (args.compile == "all" or name in args.compile.split(",")):
        row.compiled = Timing()
        compiled = StepModule(state.model, state.method)  # what run.compile builds (one process)
        compiled.compile(backend=args.compile_backend)
        variants["compiled"] = compiled
    return Run(row, state, batch, variants)


def block(run: Run, variant: str, args: argparse.Namespace) -> None:
    """Warm-up steps (``args.warmup`` the first time, compiling there, else 1), then one timed
    window of ``args.steps`` steps of the loop's ``step``: CUDA events after a synchronisation on
    a GPU, ``time.perf_counter`` on the CPU; the window's transient CUDA memory."""
    state, (images, labels), timing = run.state, run.batch, getattr(run.row, variant)
    device = state.info.device
    state.step_module = run.variants[variant]
    first = variant not in run.warm
    before = allocated(device)
    for _ in range(args.warmup if first else 1):
        step(state, images, labels)
    start_bytes = allocated(device)
    if first:  # lazily made state (gradients, the optimizer's moments, compiled buffers) stays allocated
        run.row.resident += start_bytes - before
        run.warm.add(variant)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.steps):
            step(state, images, labels)
        end.record()
        end.synchronize()
        timing.windows.append(start.elapsed_time(end) / args.steps)
        timing.transient = max(timing.transient, torch.cuda.max_memory_allocated(device) - start_bytes)
    else:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(state, images, labels)
        timing.windows.append((time.perf_counter() - t0) * 1e3 / args.steps)


def measure(names: list[str], args: argparse.Namespace, info: DistInfo) -> list[Row]:
    """Set every run up, then ``args.windows`` rounds in which each run's variants take one timed
    window in turn (load from other processes hits every method alike); a variant that fails is
    reported and left out of the next rounds."""
    splits: dict[str, Any] = {}
    prepared = []
    for name in names:
        print(f"setting up {name} ...", file=sys.stderr, flush=True)
        prepared.append(prepare(name, args, info, splits))
    runs = [r for r in prepared if isinstance(r, Run)]
    for round_ in range(args.windows):
        print(f"round {round_ + 1}/{args.windows} ...", file=sys.stderr, flush=True)
        for run in runs:
            for variant in run.variants:
                timing = getattr(run.row, variant)
                if timing.error is None:
                    try:
                        block(run, variant, args)
                    except Exception as e:  # noqa: BLE001
                        traceback.print_exc()
                        timing.error = error_text(e)
    rows = [r.row if isinstance(r, Run) else r for r in prepared]
    del runs, prepared
    gc.collect()
    return rows


# ---------------------------------------------------------------------------------------- the table
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_out(device: torch.device) -> Path:
    """``docs/benchmarks/gpu-<device name>.md``, or ``cpu-<cpu name>.md`` for the CPU."""
    return DOCS / f"{'gpu' if device.type == 'cuda' else 'cpu'}-{slug(device_name(device))}.md"


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[Row], compiled: bool, workers: int, device: torch.device) -> str:
    """The markdown table of ``rows``: ratios against the references' eager (compiled) steps."""
    by = {r.name: r for r in rows}

    def ratio(t: Timing | None, ref: str, kind: str) -> str:
        base = getattr(by[ref], kind) if ref in by else None
        ok = t is not None and t.ms is not None and base is not None and base.ms is not None
        return f"{t.ms / base.ms:.2f}" if ok else "-"

    head = ["method", "model", "batch", "ms/step", "/ vanilla", "/ mixup", "img/s", "peak MiB"]
    if compiled:
        head += ["compiled ms/step", "/ vanilla", "/ mixup", "compiled img/s", "peak MiB"]
    head += [f"loader img/s ({workers} workers)", "bound by"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.error is not None:
            lines.append(f"| {r.name} | {r.model or '-'} | not run: {r.error} |" + " |" * (len(head) - 3))
            continue
        b = r.batch
        cells = [r.name, r.model, r.inputs]
        for kind in ("eager", "compiled") if compiled else ("eager",):
            t: Timing | None = getattr(r, kind)
            if t is None or t.error is not None or t.ms is None:
                text = "-" if t is None else f"failed: {t.error}" if t.error else "-"
                cells += [text, "-", "-", "-", "-"]
                continue
            cells += [f"{t.ms:.1f}", ratio(t, "vanilla", kind), ratio(t, "mixup", kind), f"{b * 1e3 / t.ms:.0f}",
                      fmt(r.peak_mib(t, device), ".0f")]
        rates = [b * 1e3 / t.ms for t in (r.eager, r.compiled) if t is not None and t.ms]
        bound = "-" if r.loader is None or not rates else "loader" if r.loader < max(rates) else "step"
        cells += [fmt(r.loader, ".0f"), bound]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(rows: list[Row], device: torch.device) -> list[str]:
    """The AutoMix anchor, from measured numbers only."""
    by = {r.name: r for r in rows}
    out = []
    auto, mix, van = (by.get(n) for n in ("automix", "mixup", "vanilla"))
    if auto is not None and auto.eager.ms and mix is not None and mix.eager.ms and van is not None and van.eager.ms:
        here = (f"AutoMix measured here: {auto.eager.ms / mix.eager.ms:.2f}x Mixup, "
                f"{auto.eager.ms / van.eager.ms:.2f}x vanilla per step (eager)")
        c = [t.compiled.ms if t.compiled is not None else None for t in (auto, mix)]
        if None not in c:
            here += f", {c[0] / c[1]:.2f}x Mixup compiled"
        if device.type == "cuda":
            out.append(f"- {here}. The paper's GPU anchor: about 1.7-2.2x Mixup (AutoMix, Table 11: 34 h against "
                       f"20 h on Tiny-ImageNet; the reference code's ~2.2x).")
        else:
            out.append(f"- {here}, on a CPU. The documented CPU floor, 3.07x vanilla, is for resnet_small at batch "
                       f"128 x 32² (the passes AutoMix's definition needs, `benchmarks/automix_floor.py`, "
                       f"docs/benchmarks/step-cost-cpu.md); the paper's 1.7-2.2x Mixup is GPU wall-clock, not "
                       f"measured here.")
    return out


def report(rows: list[Row], args: argparse.Namespace, device: torch.device, command: str) -> str:
    name = device_name(device)
    kind = "GPU" if device.type == "cuda" else "CPU"
    amps = {r.amp for r in rows if r.amp}
    amp = f"autocast {'/'.join(sorted(amps))} (run.amp=auto)" if amps else "float32"
    compiled = args.compile is not None
    setting = (f"{date.today().isoformat()}, torch {torch.__version__}, {name} ({kind}), "
               f"{torch.get_num_threads()} torch threads; {amp}, channels_last; median of {args.windows} round-robin "
               f"windows x {args.steps} steps after {args.warmup} warm-up steps; loader: the run's train loader alone "
               f"with {args.workers} workers over {args.dataset} images; batch = images x channels x side² "
               f"(self-supervised: images x (views)).")
    lines = [f"# Step cost of every method on {'a' if kind == 'CPU' else 'an'} {kind}: {name}", "",
             f"Command: `{command}`", "", setting]
    if compiled:
        lines += ["", (f"Compiled: the engine's `run.compile` step module (`StepModule.compile(backend="
                       f"{args.compile_backend!r})`), compiled during the first warm-up.")]
    lines += ["", table(rows, compiled, args.workers, device), ""]
    lines += notes(rows, device)
    return "\n".join(lines).rstrip() + "\n"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else None,
                   help="cuda, cuda:N or cpu (default cuda; without CUDA, --device cpu must be given)")
    p.add_argument("--methods", default=",".join(registry.METHODS),
                   help="comma-separated registry names (default: all); vanilla and mixup are always measured")
    p.add_argument("--model", default="resnet18", help="the classification methods' model (default resnet18)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--windows", type=int, default=3, help="timed windows per variant (the median is reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (the compiled variant compiles here)")
    p.add_argument("--compile", nargs="?", const="all", default=None, metavar="NAMES",
                   help="also time the methods compiled (all, or these comma-separated ones)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--workers", type=int, default=8, help="loader worker processes (data.num_workers)")
    p.add_argument("--loader-batches", type=int, default=20, help="batches timed for the loader bound (0: skip)")
    p.add_argument("--dataset", default="synthetic", help="synthetic or imagefolder (with --data-root), cifar10, ...")
    p.add_argument("--data-root", default=None)
    p.add_argument("--train-images", type=int, default=0,
                   help="training images (default: enough for the loader's batches in one epoch)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (run.threads; 0: the engine's choice)")
    p.add_argument("--out", type=Path, default=None,
                   help="markdown file (default docs/benchmarks/gpu-<device>.md, cpu-<cpu>.md on the CPU)")
    args = p.parse_args(argv)
    if args.device is None:
        p.error("no CUDA device here: pass --device cpu to measure on the CPU (the table is labelled CPU)")
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        p.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    for flag in ("batch_size", "image_size", "steps", "windows"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    for flag in ("warmup", "workers", "loader_batches", "train_images", "threads"):
        if getattr(args, flag) < 0:
            p.error(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    names = list(dict.fromkeys([*REFERENCES, *(n for n in args.methods.split(",") if n)]))
    unknown = [n for n in names if n not in registry.METHODS]
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)}; valid: {', '.join(registry.METHODS)}")
    args.names = names
    args.train_images = args.train_images or args.batch_size * (args.loader_batches + max(1, args.workers) + 1)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    if args.dataset == "synthetic" and args.image_size > 64:
        print(f"note: rendering {args.train_images} synthetic images of {args.image_size}² takes minutes (about 0.2 s "
              f"each at 224²); --dataset imagefolder --data-root DIR measures a real loader", file=sys.stderr)
    rows = measure(args.names, args, info)
    command = "python benchmarks/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(rows, args, device, command.strip())
    print(text)
    out = args.out or default_out(device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
