"""Plan, run and resume the runs of a protocol: one ordinary training run per (method, seed).

Each run lives in ``<bench dir>/runs/<method>-s<seed>/`` (a normal run directory: checkpoint.pt,
metrics.csv, curves.png, ... plus ``eval.json`` from
:func:`mixlab.engine.eval_run.evaluate_checkpoint`; a self-supervised run's evaluation is its linear
probe, ``probe.json`` from :func:`mixlab.engine.probe.linear_probe`). The state of a run is read
from its files, so a benchmark can be stopped and restarted at any time:

=========  ==========================================================================
done       checkpoint at the last epoch and its ``eval.json`` and the protocol's transfers,
           ``transfer-<task>/eval.json`` (``probe.json`` and the protocol's fine-tunings,
           ``finetune-<pct>pct/finetune.json``): never redone
evaluate   checkpoint at the last epoch, an evaluation missing: the missing ones only
resume     checkpoint of an earlier epoch: training continues from it (``run.resume``)
new        no checkpoint
=========  ==========================================================================

A transfer (``eval.transfer``: :func:`mixlab.engine.transfer.transfer` of the finished run, then
its evaluation) writes ``transfer-<task>/transfer.json`` before it starts: the source checkpoint's
epoch and weights (:func:`~mixlab.engine.distributed.weights_fingerprint`) and the transfer's
config (``eval.transfer_overrides`` included). It is done when that record matches the run's
current checkpoint and the protocol, and its ``eval.json`` is of its last epoch; an interrupted
transfer resumes from its checkpoint; one of another checkpoint (the run retrained) or of other
settings is started over (its checkpoint and ``eval.json`` removed).

A run directory trained with a different config (another protocol version) is an error, not
silently mixed into the results. With ``jobs > 1`` each run is a sequence of subprocesses,
``python -m mixlab.cli train <run dir>/bench-config.yaml --no-eval --set run.threads=T ...``, then
``python -m mixlab.cli eval <run dir> ...`` (``probe`` and ``finetune``; ``transfer``), with the cores
split between the jobs (:func:`split_cores`); their output goes to ``<run dir>/bench.log``.

    >>> runs = plan(load_protocol("smoke"), "bench/smoke")
    >>> outcomes = execute(runs, load_protocol("smoke").eval, jobs=1)
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

from mixlab.bench.protocols import EvalSettings, Protocol
from mixlab.engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
from mixlab.engine.config import TrainConfig, config_to_dict

__all__ = ["Run", "plan", "execute", "run_protocol", "split_cores", "machine_description", "available_cores",
           "TIMING_NAME", "TRANSFER_NAME", "is_self_supervised", "evaluations", "pending_evaluations"]

EVAL_NAME = "eval.json"  # written by evaluate_checkpoint next to the checkpoint
PROBE_NAME = "probe.json"  # written by linear_probe next to the checkpoint (self-supervised runs)
TIMING_NAME = "bench-timing.json"  # wall-clock seconds of a run's training and evaluation, and the machine
CONFIG_NAME = "bench-config.yaml"  # the run's full config (``mixlab train <run dir>/bench-config.yaml``)
LOG_NAME = "bench.log"  # output of the --jobs subprocesses
TRANSFER_NAME = "transfer.json"  # in <run dir>/transfer-<task>: the source and config of the bench's transfer
# keys that do not change what a run computes: they may differ between a checkpoint and the plan
_FREE_KEYS = {"run": ("out", "resume", "threads", "progress", "tensorboard", "stop_epoch"),
              "data": ("root", "num_workers", "eval_batch_size")}


@dataclass
class Run:
    """One (method, seed) run of a protocol and its state on disk (see the module docstring)."""

    method: str
    seed: int
    dir: Path
    config: TrainConfig
    status: str  # "done", "evaluate", "resume" or "new"
    epoch: int = 0  # epochs in the checkpoint

    @property
    def name(self) -> str:
        return f"{self.method}-s{self.seed}"


# ------------------------------------------------------------------------------------------ plan
def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def split_cores(jobs: int, num_workers: int, threads: int = 0, cores: int | None = None) -> tuple[int, int]:
    """``(torch threads, DataLoader workers)`` of each of ``jobs`` simultaneous runs: each gets a
    share of ``cores // jobs`` (at least 1) threads, or ``threads`` (the protocol's ``run.threads``)
    if that is set and smaller, and at most ``num_workers`` (the protocol's) workers, fewer than
    its share, so that a 1-core share loads in the main process."""
    share = max(1, (cores or available_cores()) // jobs)
    return (min(threads, share) if threads > 0 else share), min(num_workers, share - 1)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    d = copy.deepcopy(config)
    for section, keys in _FREE_KEYS.items():
        for key in keys:
            d.get(section, {}).pop(key, None)
    return d


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``"key: old there, new in the protocol"`` for each differing key of two config dicts; keys
    that only one of them has (a config key added or removed in another mixlab version) are skipped."""
    if isinstance(old, dict) and isinstance(new, dict) and prefix.count(".") < 2:  # sections and their keys
        return [d for k in old if k in new for d in _differences(old[k], new[k], f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix[:-1]}: {old!r} there, {new!r} in the protocol"]


def _state(run_dir: Path, cfg: TrainConfig, settings: EvalSettings) -> tuple[str, int]:
    """``(status, epochs done)`` of the run directory (see the module docstring).

    Raises:
        ValueError: an unreadable checkpoint, or one trained with a different config.
    """
    ckpt_path = run_dir / CHECKPOINT_NAME
    if not ckpt_path.is_file():
        return "new", 0
    ckpt = load_checkpoint(ckpt_path)  # CheckpointError (a ValueError) when corrupt
    diffs = _differences(_comparable(ckpt["config"]), _comparable(config_to_dict(cfg)))
    if diffs:
        raise ValueError(f"run directory {run_dir} was trained with another config ({'; '.join(diffs[:4])}); "
                         f"delete it to redo the run, or choose another --out")
    epoch = int(ckpt["epoch"])
    if epoch < cfg.optim.epochs:
        return "resume", epoch
    return ("evaluate" if pending_evaluations(run_dir, cfg, settings, epoch) else "done"), epoch


def evaluations(cfg: TrainConfig, settings: EvalSettings) -> list[str]:
    """Every evaluation of a finished run, as :func:`pending_evaluations` names them."""
    if is_self_supervised(cfg):
        return ["probe", *(f"finetune@{f:g}" for f in settings.finetune.fractions)]
    return ["eval", *(f"transfer@{task}" for task in settings.transfer)]


def pending_evaluations(run_dir: Path, cfg: TrainConfig, settings: EvalSettings, epoch: int) -> list[str]:
    """What the finished run at ``epoch`` still lacks: ``"eval"`` (a supervised run's ``eval.json``)
    and ``"transfer@<task>"`` (its transfers, ``transfer-<task>/eval.json`` of its current weights: see
    the module docstring), ``"probe"`` (a self-supervised run's ``probe.json``) and
    ``"finetune@<fraction>"`` (its fine-tunings, ``finetune-<pct>pct/finetune.json``), each with the
    protocol's settings."""
    if not is_self_supervised(cfg):
        pending = [] if _evaluated(run_dir / EVAL_NAME, epoch, settings) else ["eval"]
        return pending + [f"transfer@{task}" for task in _untransferred(run_dir, cfg, settings)]
    pending = [] if _probed(run_dir / PROBE_NAME, epoch, settings) else ["probe"]
    return pending + [f"finetune@{f:g}" for f in settings.finetune.fractions
                      if not _finetuned(run_dir, f, epoch, settings)]


def _finetuned(run_dir: Path, fraction: float, epoch: int, settings: EvalSettings) -> bool:
    """Whether ``finetune-<pct>pct/finetune.json`` holds a fine-tuning of ``epoch`` with these settings."""
    from mixlab.engine.finetune import FINETUNE_JSON, finetune_dir

    try:
        ft = json.loads((finetune_dir(run_dir, fraction) / FINETUNE_JSON).read_text())
    except (OSError, ValueError):
        return False
    wanted = {**settings.finetune.recipe(), "pretrain_epoch": epoch, "fraction": fraction}
    return all(ft.get(k) == v for k, v in wanted.items())


def _read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _transfer_overrides(cfg: TrainConfig, settings: EvalSettings) -> list[str]:
    """The overrides of every transfer of a run of ``cfg``: its device, then ``eval.transfer_overrides``."""
    return [f"run.device={cfg.run.device}", *settings.transfer_overrides]


def _transfer_plans(run_dir: Path, cfg: TrainConfig, settings: EvalSettings
                    ) -> dict[str, tuple[TrainConfig, dict[str, Any]]]:
    """``{task: (the transfer's config, its transfer.json record)}`` of the run's current checkpoint
    (read once), for each task of ``eval.transfer``."""
    from mixlab.engine.distributed import weights_fingerprint
    from mixlab.engine.eval_run import open_checkpoint
    from mixlab.engine.transfer import transfer_config_from

    ckpt_path, ckpt, run_cfg = open_checkpoint(run_dir, None)
    source = {"source_epoch": int(ckpt["epoch"]), "source_weights": weights_fingerprint(ckpt["model"])}
    plans = {}
    for task in settings.transfer:
        tcfg = transfer_config_from(run_cfg, ckpt_path, task, _transfer_overrides(cfg, settings))
        config = _comparable(config_to_dict(tcfg))
        config["model"].pop("init")  # (the source is the record's weights, wherever the bench directory is)
        plans[task] = (tcfg, json.loads(json.dumps({"task": task, **source, "config": config})))
    return plans


def _untransferred(run_dir: Path, cfg: TrainConfig, settings: EvalSettings) -> list[str]:
    """The tasks of ``eval.transfer`` without a finished, evaluated transfer of the run's current
    checkpoint with the protocol's settings (the module docstring says how that is decided)."""
    from mixlab.engine.transfer import transfer_dir

    records = {task: _read_json(transfer_dir(run_dir, task) / TRANSFER_NAME) for task in settings.transfer}
    if not any(records.values()):  # nothing transferred yet: no need to read the checkpoint
        return list(settings.transfer)
    plans = _transfer_plans(run_dir, cfg, settings)
    return [task for task, (tcfg, record) in plans.items()
            if records[task] != record or (_read_json(Path(tcfg.run.out) / EVAL_NAME) or {}).get("epoch")
            != tcfg.optim.epochs]


def _prepare_transfer(tcfg: TrainConfig, record: dict[str, Any]) -> str:
    """Make the transfer's directory ready for the transfer ``tcfg`` of ``record``: one that holds
    another transfer (another source checkpoint, other settings, or none recorded) loses its
    checkpoint and ``eval.json`` and gets ``record``. Returns what is left: ``"train"``,
    ``"resume"`` (from its checkpoint) or ``"evaluate"``."""
    out = Path(tcfg.run.out)
    if _read_json(out / TRANSFER_NAME) != record:
        for name in (CHECKPOINT_NAME, EVAL_NAME):
            (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{TRANSFER_NAME}.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, out / TRANSFER_NAME)
    if not (out / CHECKPOINT_NAME).is_file():
        return "train"
    return "resume" if load_checkpoint(out / CHECKPOINT_NAME)["epoch"] < tcfg.optim.epochs else "evaluate"


def is_self_supervised(cfg: TrainConfig) -> bool:
    """Whether the run pre-trains without labels (evaluated by a linear probe, not by ``eval``):
    :func:`mixlab.registry.is_self_supervised` of its method."""
    from mixlab.registry import is_self_supervised as method_is_self_supervised

    return method_is_self_supervised(cfg.method.name)


def _probed(path: Path, epoch: int, settings: EvalSettings) -> bool:
    """Whether ``probe.json`` holds the probe of ``epoch`` with these settings."""
    try:
        pr = json.loads(path.read_text())
        corr, n, epochs = pr.get("corruptions"), pr["clean"]["n"], pr["probe"]["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    wanted_n = n if settings.max_corruption_images is None else min(n, settings.max_corruption_images)
    return (pr.get("epoch") == epoch and epochs == settings.probe_epochs and (corr is not None) == settings.corruptions
            and (corr is None or corr.get("n") == wanted_n))


def _evaluated(path: Path, epoch: int, settings: EvalSettings) -> bool:
    """Whether ``eval.json`` holds the evaluation of ``epoch`` with these settings."""
    try:
        ev = json.loads(path.read_text())
        corr, n = ev.get("corruptions"), ev["clean"]["n"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    wanted_n = n if settings.max_corruption_images is None else min(n, settings.max_corruption_images)
    effective = ev.get("effective_classes")
    return (ev.get("epoch") == epoch and (ev.get("fgsm") is not None) == settings.fgsm
            and (corr is not None) == settings.corruptions and (corr is None or corr.get("n") == wanted_n)
            and (ev.get("ood") is not None) == settings.ood
            and (settings.wsol is None and "wsol" in ev or (ev.get("wsol") is not None) is settings.wsol)
            and (effective["steps"] if effective else 0) == settings.effective_classes)


def _data_root(protocol: Protocol, data_root: str | os.PathLike | None) -> str | None:
    """The protocol's (or ``data_root``'s) dataset location, made absolute from the current
    directory, or None for the synthetic dataset. A protocol with ``data.download`` may name a
    folder that does not exist yet: its first run downloads the dataset there.

    Raises:
        FileNotFoundError: the location does not exist (the message says how to give it).
    """
    d = protocol.base.data
    if d.name == "synthetic":
        return None
    root = data_root if data_root is not None else d.root
    if root is None:
        raise FileNotFoundError(f"protocol {protocol.name!r} needs the {d.name} data: pass --data-root PATH")
    path = Path(root).expanduser().resolve()
    if not path.exists() and not d.download:
        hint = ("check --data-root" if data_root is not None else
                "the protocol's data.root is relative to the directory you run from: run from there, or pass "
                "--data-root PATH")
        raise FileNotFoundError(f"{d.name} data not found at {root} (resolved from {Path.cwd()} to {path}); {hint}")
    return str(path)


def plan(protocol: Protocol, out: str | os.PathLike, methods: Sequence[str] | None = None,
         seeds: Sequence[int] | None = None, data_root: str | os.PathLike | None = None) -> list[Run]:
    """The runs of ``protocol`` in ``out``, seed by seed (every method once before any twice), with
    their state on disk.

    Args:
        protocol: a loaded protocol.
        out: the bench directory; runs go to ``out/runs/<method>-s<seed>``.
        methods: run only these of the protocol's methods (default: all, in the protocol's order).
        seeds: these seeds instead of the protocol's.
        data_root: the dataset's location instead of the protocol's ``data.root``.

    Raises:
        ValueError: a method not in the protocol (its methods are listed), a negative seed, a run
            directory trained with another config.
        FileNotFoundError: the dataset is not where the protocol (or ``data_root``) says.
    """
    methods = list(protocol.methods) if methods is None else list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in protocol.methods]
    if unknown:
        raise ValueError(f"protocol {protocol.name!r} has no method {', '.join(map(repr, unknown))}; "
                         f"its methods: {', '.join(protocol.methods)}")
    seeds = list(protocol.seeds) if seeds is None else list(dict.fromkeys(seeds))
    if not methods or not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"need at least one method and one seed (>= 0), got methods {methods}, seeds {seeds}")
    root = _data_root(protocol, data_root)
    runs = []
    for seed in seeds:
        for method in methods:
            cfg = protocol.config(method, seed)
            run_dir = Path(out).resolve() / "runs" / f"{method}-s{seed}"
            cfg.data.root, cfg.run.out = root, str(run_dir)
            runs.append(Run(method, seed, run_dir, cfg, *_state(run_dir, cfg, protocol.eval)))
    return runs


# ------------------------------------------------------------------------------------------- run
def machine_description() -> str:
    """'2 CPU cores (Intel Xeon ...), torch 2.x, GPU: NVIDIA H100' or '..., no GPU'."""
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        cpu = platform.processor()
    gpu = f"GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return f"{available_cores()} CPU cores{f' ({cpu})' if cpu else ''}, torch {torch.__version__}, {gpu}"


def _add_timing(run_dir: Path, **seconds: float) -> None:
    """Add ``seconds`` to the run's ``bench-timing.json`` (training, fine-tuning and transfers
    accumulate over resumes, fractions and tasks)."""
    path = run_dir / TIMING_NAME
    try:
        timing = json.loads(path.read_text())
    except (OSError, ValueError):
        timing = {}
    for key, value in seconds.items():
        summed = key in ("train_s", "finetune_s", "transfer_s")
        timing[key] = round((timing.get(key, 0.0) if summed else 0.0) + value, 2)
    timing["machine"] = machine_description()
    path.write_text(json.dumps(timing, indent=2) + "\n")


def _transfer_sets(cfg: TrainConfig, settings: EvalSettings, tcfg: TrainConfig, todo: str, threads: int,
                   workers: int) -> list[str]:
    """The overrides of a transfer (:func:`_prepare_transfer` left ``todo``) of a run of ``cfg`` in a
    job: the protocol's, the job's threads and workers, no progress bar, and ``run.resume`` to continue."""
    return [*_transfer_overrides(cfg, settings), f"run.threads={threads}", f"data.num_workers={workers}",
            "run.progress=false", f"run.tensorboard={str(cfg.run.tensorboard).lower()}",
            *([f"run.resume={tcfg.run.out}"] if todo == "resume" else [])]


def _evaluate(run: Run, settings: EvalSettings, threads: int, workers: int) -> float:
    """The run's pending evaluations (:func:`pending_evaluations`) on ``threads`` torch threads
    (restored afterwards): ``evaluate_checkpoint`` and the transfers (each timed as ``transfer_s``),
    or ``linear_probe`` and ``finetune``. Returns the seconds of the transfers."""
    from mixlab.engine.eval_run import evaluate_checkpoint
    from mixlab.engine.finetune import finetune
    from mixlab.engine.probe import linear_probe
    from mixlab.engine.transfer import transfer

    cfg = run.config
    common = {"device": cfg.run.device, "progress": False, "data_root": cfg.data.root}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    transfer_s = 0.0
    try:
        pending = pending_evaluations(run.dir, cfg, settings, cfg.optim.epochs)
        plans = _transfer_plans(run.dir, cfg, settings) if any(w.startswith("transfer@") for w in pending) else {}
        for what in pending:
            if what.startswith("transfer@"):
                t0 = time.perf_counter()
                try:
                    tcfg, record = plans[what.partition("@")[2]]
                    todo = _prepare_transfer(tcfg, record)
                    if todo != "evaluate":
                        transfer(run.dir, tcfg.data.task, _transfer_sets(cfg, settings, tcfg, todo, threads, workers))
                    evaluate_checkpoint(tcfg.run.out, fgsm=False, corruptions=False, ood=False, device=cfg.run.device,
                                        progress=False)
                finally:  # an interrupted transfer's time counts too
                    seconds = time.perf_counter() - t0
                    transfer_s += seconds
                    _add_timing(run.dir, transfer_s=seconds)
            elif what == "eval":
                evaluate_checkpoint(run.dir, fgsm=settings.fgsm, corruptions=settings.corruptions,
                                    max_corruption_images=settings.max_corruption_images, ood=settings.ood,
                                    wsol=settings.wsol, effective_classes=settings.effective_classes, **common)
            elif what == "probe":
                linear_probe(run.dir, epochs=settings.probe_epochs, corruptions=settings.corruptions,
                             max_corruption_images=settings.max_corruption_images, **common)
            else:
                finetune(run.dir, fraction=float(what.partition("@")[2]), **settings.finetune.recipe(),
                         overrides=[f"run.threads={threads}", f"data.num_workers={workers}"], **common)
    finally:
        torch.set_num_threads(previous)
    return transfer_s


def _in_process(run: Run, settings: EvalSettings, threads: int, workers: int) -> None:
    from mixlab.engine.loop import train

    cfg = copy.deepcopy(run.config)
    cfg.run.threads, cfg.data.num_workers = threads, workers
    cfg.run.resume = str(run.dir) if run.status == "resume" else None
    if run.status in ("new", "resume"):
        t0 = time.perf_counter()
        try:
            train(cfg)
        finally:  # an interrupted segment's time counts too
            _add_timing(run.dir, train_s=time.perf_counter() - t0)
    t0 = time.perf_counter()
    transfer_s = _evaluate(run, settings, threads, workers)
    _add_timing(run.dir, eval_s=time.perf_counter() - t0 - transfer_s)


def _subprocess(run: Run, settings: EvalSettings, threads: int, workers: int) -> None:
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / CONFIG_NAME).write_text(yaml.safe_dump(config_to_dict(run.config), sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    sets = [f"run.threads={threads}", f"data.num_workers={workers}", "run.progress=false"]
    if run.status == "resume":
        sets.append(f"run.resume={run.dir}")
    cli = [sys.executable, "-m", "mixlab.cli"]
    where = ["--no-progress", "--device", run.config.run.device]
    where += ["--data-root", run.config.data.root] if run.config.data.root else []
    pending = evaluations(run.config, settings) if run.status in ("new", "resume") else \
        pending_evaluations(run.dir, run.config, settings, run.config.optim.epochs)
    steps: list[tuple[str, list[str] | Callable[[], list[str]]]] = []
    for what in pending:
        if what.startswith("transfer@"):  # its command once the run is trained (the source weights are recorded)
            steps.append(("transfer_s", lambda task=what.partition("@")[2]: _transfer_command(run, task, settings,
                                                                                             threads, workers)))
            continue
        if what.startswith("finetune@"):  # a training run of its own, on this job's threads and workers
            recipe = [a for k, v in settings.finetune.recipe().items() for a in (f"--{k.replace('_', '-')}", str(v))]
            cmd = [*cli, "finetune", str(run.dir), "--fraction", what.partition("@")[2], *recipe, *where]
            steps.append(("finetune_s", cmd + [a for s in sets[:2] for a in ("--set", s)]))
            continue
        cmd = [*cli, what, str(run.dir), *where]  # mixlab eval / mixlab probe (the linear probe)
        cmd += ["--max-corruption-images", str(settings.max_corruption_images)] if settings.max_corruption_images else []
        cmd += ["--epochs", str(settings.probe_epochs)] if what == "probe" else []
        if what == "eval":
            cmd += ["--no-fgsm"] if not settings.fgsm else []
            cmd += ["--no-ood"] if not settings.ood else []
            cmd += [] if settings.wsol is None else ["--wsol" if settings.wsol else "--no-wsol"]
            cmd += ["--effective-classes", str(settings.effective_classes)] if settings.effective_classes else []
        cmd += ["--no-corruptions"] if not settings.corruptions else []
        steps.append(("eval_s", cmd))
    if run.status in ("new", "resume"):
        train_cmd = [sys.executable, "-m", "mixlab.cli", "train", str(run.dir / CONFIG_NAME), "--no-eval"]
        steps.insert(0, ("train_s", train_cmd + [a for s in sets for a in ("--set", s)]))
    with open(run.dir / LOG_NAME, "a") as log:
        for key, cmd in steps:
            cmd = cmd() if callable(cmd) else cmd
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            t0 = time.perf_counter()
            try:
                code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
            finally:
                _add_timing(run.dir, **{key: time.perf_counter() - t0})
            if code != 0:
                tail = (run.dir / LOG_NAME).read_text().splitlines()[-5:]
                raise RuntimeError(f"exit status {code} (log: {run.dir / LOG_NAME}): " + " | ".join(tail))


def _transfer_command(run: Run, task: str, settings: EvalSettings, threads: int, workers: int) -> list[str]:
    """The subprocess of a transfer of ``run`` to ``task`` (after :func:`_prepare_transfer`):
    ``mixlab transfer`` (which evaluates after training), or ``mixlab eval`` of a transfer trained
    to its end."""
    tcfg, record = _transfer_plans(run.dir, run.config, settings)[task]
    todo = _prepare_transfer(tcfg, record)
    cli = [sys.executable, "-m", "mixlab.cli"]
    if todo == "evaluate":
        return [*cli, "eval", tcfg.run.out, "--no-progress", "--device", run.config.run.device]
    sets = _transfer_sets(run.config, settings, tcfg, todo, threads, workers)
    return [*cli, "transfer", str(run.dir), "--task", task, *(a for s in sets for a in ("--set", s))]


def execute(runs: Sequence[Run], settings: EvalSettings, jobs: int = 1,
            log: Callable[[str], None] = print) -> dict[str, str]:
    """Train and evaluate every run that is not done, ``jobs`` at a time.

    ``jobs == 1`` runs in this process; ``jobs > 1`` in subprocesses (see the module docstring),
    each with :func:`split_cores`'s threads and workers. A failing run is reported and the others
    go on.

    Returns:
        ``{run name: outcome}`` in plan order, outcome ``"skipped"`` (was done), ``"trained"``,
        ``"evaluated"`` or ``"failed: <error>"``.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    todo = [r for r in runs if r.status != "done"]
    outcomes = {r.name: "skipped" if r.status == "done" else "not run" for r in runs}
    if not todo:
        return outcomes
    threads, workers = split_cores(jobs, runs[0].config.data.num_workers, runs[0].config.run.threads)
    log(f"mixlab bench: {len(todo)} run(s) to do, {min(jobs, len(todo))} at a time, {threads} thread(s) and "
        f"{workers} loader worker(s) each")

    def one(i_run: tuple[int, Run]) -> None:
        i, run = i_run
        what = {"new": "training", "resume": f"resuming from epoch {run.epoch}", "evaluate": "evaluating"}[run.status]
        log(f"[{i}/{len(todo)}] {run.name}: {what} ({run.dir})")
        t0 = time.perf_counter()
        try:
            (_in_process if jobs == 1 else _subprocess)(run, settings, threads, workers)
        except Exception as e:  # noqa: BLE001 - report the run and go on with the others
            outcomes[run.name] = f"failed: {type(e).__name__}: {e}"
            log(f"[{i}/{len(todo)}] {run.name}: FAILED: {type(e).__name__}: {e}")
            return
        outcomes[run.name] = "evaluated" if run.status == "evaluate" else "trained"
        run.status, run.epoch = "done", run.config.optim.epochs
        log(f"[{i}/{len(todo)}] {run.name}: done in {time.perf_counter() - t0:.0f} s")

    if jobs == 1:
        for item in enumerate(todo, 1):
            one(item)
    else:
        pool = ThreadPoolExecutor(max_workers=jobs)
        try:
            list(pool.map(one, enumerate(todo, 1)))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


# ------------------------------------------------------------------------------ the whole bench
BENCH_NAME = "bench.json"  # the bench directory's protocol, commands, machines and wall-clock total


def _run_dir_seeds(out: Path, methods: Sequence[str]) -> list[int]:
    """Seeds of the ``<method>-s<seed>`` directories already in ``out/runs``."""
    seeds = []
    for d in sorted((out / "runs").glob("*-s*")):
        method, _, seed = d.name.rpartition("-s")
        if method in methods and seed.isdigit():
            seeds.append(int(seed))
    return seeds


def run_protocol(protocol: Protocol, out: str | os.PathLike, *, methods: Sequence[str] | None = None,
                 seeds: Sequence[int] | None = None, jobs: int = 1, data_root: str | os.PathLike | None = None,
                 dry_run: bool = False, command: str = "", merge: str | os.PathLike | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Plan, run what is not done, then write ``results.csv``, ``results.md``, ``accuracy.png``,
    ``curves.png`` and ``gallery.png`` in ``out`` from every finished run there.

    The report covers every finished run of the protocol in ``out`` (earlier invocations'
    included), not only this invocation's ``methods`` and ``seeds``. With ``merge`` (the
    ``results.csv`` of another bench directory of the same protocol, e.g. a committed one), its rows
    of the protocol's methods join the report wherever ``out`` has no finished run of that
    (method, seed); results.md names them, and curves.png leaves them out (their run directories
    are elsewhere).

    Returns:
        ``{"runs": [Run, ...] planned now, "outcomes": execute()'s dict, "rows": results rows,
        "files": [paths written]}``; with ``dry_run`` only ``runs`` (nothing is run or written).

    Raises:
        ValueError: as :func:`plan`; ``out`` holds another protocol's bench.
        FileNotFoundError: the dataset is missing.
    """
    from mixlab.bench import plots, report

    t0 = time.perf_counter()
    out = Path(out)
    runs = plan(protocol, out, methods, seeds, data_root)
    from mixlab.bench.report import read_rows

    extra = [r for r in read_rows(merge) if r["method"] in protocol.methods] if merge is not None else []
    if dry_run:
        return {"runs": runs, "outcomes": {}, "rows": [], "files": []}
    bench_file = out / BENCH_NAME
    info = json.loads(bench_file.read_text()) if bench_file.is_file() else {"protocol": protocol.name}
    if info.get("protocol") != protocol.name:
        raise ValueError(f"{out} holds a bench of protocol {info.get('protocol')!r}, not {protocol.name!r}; "
                         f"choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    info.setdefault("commands", [])
    info.setdefault("machines", [])
    for key, value in (("commands", command), ("machines", machine_description())):
        if value and value not in info[key]:
            info[key].append(value)
    bench_file.write_text(json.dumps(info, indent=2) + "\n")
    try:
        outcomes = execute(runs, protocol.eval, jobs, log)
    finally:  # an interrupted invocation's time counts too
        info["wall_clock_s"] = round(info.get("wall_clock_s", 0.0) + time.perf_counter() - t0, 1)
        bench_file.write_text(json.dumps(info, indent=2) + "\n")

    # the report: every finished run of the protocol in `out`, seed by seed
    all_seeds = list(dict.fromkeys([*protocol.seeds, *(s.seed for s in runs), *_run_dir_seeds(out, protocol.methods)]))
    everything = plan(protocol, out, None, all_seeds, data_root)  # states re-read from disk
    order = list(protocol.methods)
    rows = report.collect_rows(everything, protocol.eval.transfer)
    here = {(r["method"], r["seed"]) for r in rows}
    extra = [r for r in extra if (r["method"], r["seed"]) not in here]
    rows = sorted(rows + extra, key=lambda r: (order.index(r["method"]), r["seed"]))
    merged = [(str(merge), [f"{r['method']}-s{r['seed']}" for r in extra])] if extra else []
    wanted = {r.name for r in runs} | {f"{m}-s{s}" for m in protocol.methods for s in protocol.seeds}
    taken = {f"{r['method']}-s{r['seed']}" for r in extra}
    missing = [r.name for r in everything if r.status != "done" and r.name in wanted and r.name not in taken]
    if not rows:
        log("mixlab bench: no finished run to report")
        return {"runs": runs, "outcomes": outcomes, "rows": [], "files": []}
    files = [out / "results.csv", out / "results.md", out / "accuracy.png", out / "curves.png", out / "gallery.png"]
    report.write_csv(rows, files[0])
    report.write_markdown(rows, files[1], protocol=protocol, commands=info["commands"], machines=info["machines"],
                          wall_clock_s=info["wall_clock_s"], missing=missing, merged=merged)
    what = "linear-probe test top-1" if is_self_supervised(everything[0].config) else "last-epoch test top-1"
    curve = "kNN top-1" if is_self_supervised(everything[0].config) else "test top-1"
    key = {"segmentation": "miou", "detection": "map"}.get(everything[0].config.data.task)  # the dense tasks' metric
    if key is not None:
        what, curve = f"last-epoch test {key}", f"test {key}"
        files = files[:4]  # (gallery.png shows classification mixes)
    plots.plot_accuracy(rows, files[2], title=f"{protocol.name}: {what}\nmean ± std over seeds (dots: seeds)",
                        ylabel=f"{what} %", key=key or "top1")
    plots.plot_curves(rows, files[3], title=f"{protocol.name}: {curve} per epoch, mean over seeds",
                      metric=key and f"test_{key}")
    if key is None:
        plots.plot_gallery(everything[0].config, protocol.methods, files[4])
    log(f"mixlab bench: {len(rows)} finished run(s) reported in {out}: " + ", ".join(f.name for f in files))
    return {"runs": runs, "outcomes": outcomes, "rows": rows, "files": files}
