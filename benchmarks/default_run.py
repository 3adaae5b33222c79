"""Wall time of the README's default run (``mixlab train``), phase by phase, for two source trees.

Each tree (a ``src`` directory: this checkout's, and e.g. an older commit's checked out with
``git worktree add /tmp/old <commit>``) runs ``python -m mixlab.cli train`` with the same
arguments in a subprocess. Output lines are timestamped as they arrive, which splits a run into

* ``startup``: imports, the synthetic data, the model, until the run's header line;
* ``train``: the epochs (training steps, the per-epoch test pass, plots and checkpoints);
* ``eval``: the final evaluation (clean, FGSM, corruptions) after the last epoch's line;

and each run's CPU seconds (its process and its DataLoader workers) come from ``os.wait4``.

By default the runs start *together*, so other work on the machine slows both alike and the
new/old ratio is fair even on a shared machine (each run then takes longer than alone);
``--alternate`` runs them one after the other, ``--repeats`` times. ``--omp-threads 1`` (the
default) pins every phase to one OpenMP thread: the final evaluation otherwise uses all cores,
and two threads that share a busy machine slow down many times over, which swamps any ratio.
The script also checks that both runs reached the same final accuracy and evaluation.

    python benchmarks/default_run.py --old /tmp/old/src                      # the whole default run
    python benchmarks/default_run.py --old /tmp/old/src --args "--epochs 3"  # shorter
    python benchmarks/default_run.py --old /tmp/old/src --alternate --repeats 2 --omp-threads 0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PHASES = ("startup", "train", "eval")


def run(label: str, src: Path, out: Path, extra: list[str], omp_threads: int, results: dict) -> None:
    """Run the default training in ``src``; store ``{phase: seconds, total, cpu, top1}`` under ``label``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    if omp_threads:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    cmd = [sys.executable, "-u", "-m", "mixlab.cli", "train", "--set", "run.progress=false", "--out", str(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    marks: dict[str, float] = {}
    top1 = None
    for line in proc.stdout:
        t = time.perf_counter() - t0
        if line.startswith("mixlab:"):
            marks["header"] = t
        elif line.startswith("epoch "):
            marks["last_epoch"] = t
        found = re.search(r"final test accuracy: ([0-9.]+)%", line)
        top1 = found.group(1) if found else top1
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)  # the exit status and the CPU time of the run and its workers
    proc.returncode = os.waitstatus_to_exitcode(status)
    total = time.perf_counter() - t0
    if proc.returncode != 0 or "header" not in marks or "last_epoch" not in marks:
        raise RuntimeError(f"{label}: `{shlex.join(cmd)}` failed (exit status {proc.returncode})")
    results[label] = {"startup": marks["header"], "train": marks["last_epoch"] - marks["header"],
                      "eval": total - marks["last_epoch"], "total": total, "cpu": usage.ru_utime + usage.ru_stime,
                      "top1": top1, "eval_json": _evaluation(out)}


def _evaluation(run_dir: Path) -> str | None:
    """The run's evaluation numbers (no timings or paths), to compare two runs."""
    path = run_dir / "eval.json"
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    return json.dumps({k: results.get(k) for k in ("clean", "fgsm", "corruptions")}, sort_keys=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", type=Path, required=True, help="the src directory of the reference tree")
    p.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1] / "src",
                   help="the src directory of the tree under test (default: this checkout's)")
    p.add_argument("--args", default="", help="extra `mixlab train` arguments, e.g. \"--epochs 3\"")
    p.add_argument("--alternate", action="store_true", help="old then new, one at a time (default: together)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--omp-threads", type=int, default=1, help="OMP_NUM_THREADS of both runs (0: leave unset)")
    args = p.parse_args()
    for name in ("old", "new"):
        if not (getattr(args, name) / "mixlab" / "cli.py").is_file():
            p.error(f"--{name} must be a src directory holding mixlab/cli.py, got {getattr(args, name)}")
    extra = shlex.split(args.args)

    rows: dict[str, list[dict]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="mixlab-default-run-") as tmp:
        for repeat in range(args.repeats):
            results: dict[str, dict] = {}
            jobs = [threading.Thread(target=run, args=(name, getattr(args, name).resolve(),
                                                       Path(tmp) / f"{name}{repeat}", extra, args.omp_threads,
                                                       results))
                    for name in ("old", "new")]
            for job in jobs:
                job.start()
                if args.alternate:
                    job.join()
            for job in jobs:
                job.join()
            if set(results) != {"old", "new"}:
                sys.exit("a run failed (see the error above)")
            for name in ("old", "new"):
                rows[name].append(results[name])
                r = results[name]
                print(f"{name}{repeat}: " + "  ".join(f"{k} {r[k]:6.1f} s" for k in (*PHASES, "total", "cpu"))
                      + f"  top-1 {r['top1']}%  load {os.getloadavg()[0]:.2f}", flush=True)
            print(f"  same final top-1: {results['old']['top1'] == results['new']['top1']}; same evaluation: "
                  f"{results['old']['eval_json'] == results['new']['eval_json']}")
    print("new / old (summed over the repeats): " + "  ".join(
        f"{k} {sum(r[k] for r in rows['new']) / sum(r[k] for r in rows['old']):.3f}"
        for k in (*PHASES, "total", "cpu")))


if __name__ == "__main__":
    main()
