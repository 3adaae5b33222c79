"""``mixlab bench``: argument parsing only; the work happens in :mod:`mixlab.bench.runner`.

Wired into ``mixlab.cli`` with two lines::

    from mixlab.bench import command as bench_command
    bench_command.add_parser(sub)            # sub: the parser's add_subparsers(); sets func=run
"""

from __future__ import annotations

import argparse
import shlex
import textwrap

__all__ = ["add_parser", "run"]


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated method names (e.g. vanilla,mixup), got {text!r}")
    return names


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0 (e.g. 0,1,2), got {text!r}")
    return seeds


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``subparsers`` (``func=run``) and return its parser."""
    from mixlab.bench.protocols import list_protocols

    protocols = "\n".join(textwrap.fill(f"{name}: {text.split('. ')[0].rstrip('.')}.", width=79, initial_indent="  ",
                                         subsequent_indent="      ") for name, text in list_protocols().items())
    description = "\n\n".join(textwrap.fill(paragraph, width=79) for paragraph in (
        "Run a named protocol: one ordinary training run per (method, seed) with the protocol's fixed config, "
        "each evaluated on the test split (clean top-1 / top-5 / NLL, ECE and RMS calibration, FGSM 8/255, "
        "corruptions), then one results table and plots over every finished run in the bench directory.",
        "Runs are resumable and idempotent: DIR/runs/<method>-s<seed>/ is skipped when its checkpoint is at the "
        "last epoch and evaluated, resumed from its checkpoint when interrupted, started otherwise. Run the same "
        "command again after an interruption, or with more --seeds later."))
    p = subparsers.add_parser(
        "bench",
        help="run a benchmark protocol (every method x seeds) and report a results table",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=description,
        epilog=f"protocols (mixlab bench --list describes them in full):\n{protocols}\n\n"
               "written to DIR:\n"
               "  results.csv   one row per run: last-epoch top-1 (and best_top1, labelled\n"
               "                best), top-5, NLL, ECE, RMS, FGSM, corruption top-1, s/epoch,\n"
               "                images/s, wall time (+ transfer_miou, transfer_map, transfer_map50\n"
               "                with the protocol's eval.transfer)\n"
               "  results.md    one row per method, mean ± std over seeds (beside the published\n"
               "                top-1 when the protocol has references); the seed-to-seed\n"
               "                spread; which methods differ from vanilla by more than 2x the\n"
               "                pooled seed std; command, machine, wall-clock time\n"
               "  accuracy.png  last-epoch top-1 per method with std error bars\n"
               "  curves.png    test top-1 per epoch, mean over seeds, one line per method\n"
               "  gallery.png   the same 8 test images mixed by every method\n"
               "  runs/         the run directories (checkpoint.pt, metrics.csv, eval.json,\n"
               "                transfer-<task>/, ...)\n\n"
               "examples:\n"
               "  mixlab bench cifar10-quick --dry-run           # what would run\n"
               "  mixlab bench cifar10-quick --methods vanilla,mixup --seeds 0\n"
               "  mixlab bench cifar10-quick --jobs 2 --data-root /data/cifar10-jpeg.zip\n"
               "  mixlab bench cifar10-full --out bench/full     # on a GPU\n"
               "  mixlab bench cifar100-openmixup                # beside openmixup's CIFAR-100 table\n"
               "  mixlab bench my-protocol.yaml                  # a protocol file of your own\n"
               "  mixlab bench cifar10-quick --methods puzzlemix --jobs 2 \\\n"
               "      --merge docs/results/cifar10-quick/results.csv   # new rows next to the committed ones",
    )
    p.add_argument("protocol", nargs="?", metavar="PROTOCOL",
                   help="a protocol name (see below) or the path of a protocol .yaml file")
    p.add_argument("--out", metavar="DIR", help="bench directory (default runs/bench/<protocol>)")
    p.add_argument("--methods", type=_names, metavar="A,B",
                   help="run only these of the protocol's methods (default: all)")
    p.add_argument("--seeds", type=_seeds, metavar="0,1,2", help="these seeds instead of the protocol's")
    p.add_argument("--jobs", type=_positive, default=1, metavar="N",
                   help="runs at once, in subprocesses sharing the CPU cores (default 1: one run at a time, "
                        "in this process)")
    p.add_argument("--data-root", metavar="PATH",
                   help="dataset location instead of the protocol's (relative paths: from the current directory)")
    p.add_argument("--merge", metavar="RESULTS_CSV",
                   help="also report the rows of another bench's results.csv of this protocol (e.g. the committed "
                        "docs/results/<protocol>/results.csv) for the (method, seed) runs DIR has not finished")
    p.add_argument("--dry-run", action="store_true", help="list the runs and what each needs; run nothing")
    p.add_argument("--list", action="store_true", help="list the protocols and exit")
    p.set_defaults(func=run)
    return p


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces ``args`` (for results.md)."""
    parts = ["mixlab", "bench", args.protocol]
    if args.out:
        parts += ["--out", args.out]
    if args.methods:
        parts += ["--methods", ",".join(args.methods)]
    if args.seeds:
        parts += ["--seeds", ",".join(map(str, args.seeds))]
    if args.jobs != 1:
        parts += ["--jobs", str(args.jobs)]
    if args.data_root:
        parts += ["--data-root", args.data_root]
    if getattr(args, "merge", None):
        parts += ["--merge", args.merge]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    """Run ``mixlab bench`` from parsed arguments; returns the exit status (1 if a run failed).

    Raises:
        ValueError: unknown protocol or method, invalid protocol, a run directory of another config.
        FileNotFoundError: the dataset is missing.
    """
    from mixlab.bench.protocols import list_protocols, load_protocol

    if args.list:
        for name, text in list_protocols().items():
            print(textwrap.fill(f"{name}: {text}", width=100, subsequent_indent="    "))
        return 0
    if not args.protocol:
        raise ValueError(f"give a protocol: {', '.join(list_protocols())} (or a .yaml file); see mixlab bench --help")
    from mixlab.bench.runner import evaluations, pending_evaluations, run_protocol

    protocol = load_protocol(args.protocol)
    out = args.out or f"runs/bench/{protocol.name}"
    result = run_protocol(protocol, out, methods=args.methods, seeds=args.seeds, jobs=args.jobs,
                          data_root=args.data_root, dry_run=args.dry_run, command=_command(args), merge=args.merge)
    if args.dry_run:
        todo = [r for r in result["runs"] if r.status != "done"]
        print(f"protocol {protocol.name}: {len(result['runs'])} run(s) in {out}/runs, {len(todo)} to do")
        for r in result["runs"]:  # with the evaluations beyond the first (fine-tunings, transfers), or those left
            if r.status == "done":
                what = "done (skipped)"
            elif r.status == "evaluate":
                what = "evaluate only: " + ", ".join(pending_evaluations(r.dir, r.config, protocol.eval, r.epoch))
            else:
                what = ("train" if r.status == "new" else f"resume from epoch {r.epoch}/{r.config.optim.epochs}")
                what += "".join(f" + {e}" for e in ["evaluate", *evaluations(r.config, protocol.eval)[1:]])
            print(f"  {r.name:<22} {what}")
        return 0
    failed = {k: v for k, v in result["outcomes"].items() if v.startswith("failed")}
    for name, outcome in failed.items():
        print(f"mixlab bench: {name} {outcome}")
    return 1 if failed else 0
