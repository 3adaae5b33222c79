"""The results of a benchmark: one CSV row per run, one Markdown row per method.

Every number is measured on the test split. Accuracy is the *last* epoch's (``top1``, from
``eval.json``); the best epoch's accuracy appears only in the CSV, as ``best_top1`` with its
``best_epoch``, and is never averaged into the table. Means and standard deviations are over
seeds (sample std, ``n - 1``).

Which methods differ from vanilla is decided from the seed-to-seed spread: the pooled standard
deviation ``s = sqrt(sum_m (n_m - 1) s_m^2 / sum_m (n_m - 1))`` over every method with at least
two seeds; a method differs when ``|mean_m - mean_vanilla| > 2 s``. With ``n`` seeds the
difference of two means has a standard error of ``s * sqrt(2 / n)``, so 2 s is about 2.4 standard
errors with 3 seeds: a screen against seed noise, not a significance test.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from mixlab import registry
from mixlab.bench.protocols import CLAIM_METRICS, method_name
from mixlab.evaluation.corruptions import CORRUPTIONS

__all__ = ["COLUMNS", "finetune_key", "read_rows", "collect_rows", "read_history", "mean_std", "pooled_std", "summarize", "compare_to_baseline", "check_claim",
           "write_csv", "write_markdown", "reference_column"]

# results.csv columns: (name, meaning)
COLUMNS = {
    "method": "method name",
    "seed": "run seed",
    "top1": "test top-1 % at the last epoch (self-supervised runs: of the linear probe on the last epoch's backbone)",
    "knn_top1": "self-supervised runs: kNN top-1 % of the backbone's features at the last epoch (k 200, T 0.1)",
    "best_top1": "BEST test top-1 % over all epochs (an optimistic number: reported for reference only)",
    "best_epoch": "the epoch of best_top1 (self-supervised runs: of the best kNN top-1)",
    "top5": "test top-5 % (last epoch)",
    "nll": "test negative log-likelihood (last epoch)",
    "ece": "expected calibration error %, 15 bins (last epoch)",
    "rms": "RMS calibration error %, 15 bins (last epoch)",
    "fgsm_top1": "test top-1 % under FGSM, eps = 8/255 (last epoch)",
    "corruption_top1": "mean test top-1 % over the corruptions x severities 1-5 (mCA, last epoch)",
    "corruption_images": "test images the corruption accuracy is measured on",
    "ood_auroc": "out-of-distribution AUROC % of the max softmax probability, test images vs synthetic noise images "
                 "(mean over the Gaussian and uniform sets; last epoch)",
    "ood_fpr95": "out-of-distribution FPR % at 95 % TPR, as ood_auroc (lower is better)",
    "maxboxacc": "weakly supervised localization: MaxBoxAccV2 % of the true class's CAM, IoU 30/50/70 averaged "
                 "(datasets with boxes; last epoch)",
    "effective_classes": "effective class number: classes with target weight > 1e-4 per training target, averaged "
                         "over the run's first N steps (RecursiveMix Fig. 7; eval.effective_classes = N)",
    "miou": "segmentation: test mIoU % (last epoch; classes present in the labels or predictions)",
    "pixel_acc": "segmentation: test pixel accuracy % (last epoch)",
    "map": "detection: test COCO box mAP@[.50:.95] % (last epoch, pycocotools)",
    "map50": "detection: test box AP at IoU 0.50 % (last epoch)",
    "transfer_miou": "eval.transfer: test mIoU % of the run's backbone fine-tuned for segmentation (mixlab transfer; "
                     "<run>/transfer-segmentation/eval.json)",
    "transfer_map": "eval.transfer: test COCO box mAP@[.50:.95] % of the run's backbone fine-tuned for detection "
                    "(<run>/transfer-detection/eval.json)",
    "transfer_map50": "eval.transfer: test box AP at IoU 0.50 % of the detection transfer",
    "epochs": "epochs trained",
    "epoch_time_s": "mean seconds of training per epoch (the test passes not included)",
    "images_per_s": "mean training throughput, images per second",
    "wall_time_s": "wall-clock seconds of the run: training (over all resumes; at least the sum of the epochs' "
                   "times) + evaluation (+ fine-tunings and transfers)",
    "run_dir": "the run directory",
}
_TABLE = [("top1", "top-1 % (last epoch)"), ("ece", "ECE %"), ("fgsm_top1", "FGSM top-1 %"),
          ("corruption_top1", "corruption top-1 % (mCA)"), ("epoch_time_s", "train s / epoch")]
# self-supervised protocols: the kNN monitor, the linear probe and the probe's robustness
_TABLE_SSL = [("knn_top1", "kNN top-1 %"), ("top1", "linear-probe top-1 %"),
              ("corruption_top1", "probe corruption top-1 % (mCA)"), ("epoch_time_s", "train s / epoch")]
# shown when some row has them: the OOD score, the localization, the effective class number, the transfers
_TRANSFER = [("transfer_miou", "transfer mIoU %"), ("transfer_map", "transfer mAP %"),
             ("transfer_map50", "transfer AP50 %")]
_TRANSFER_COMPARED = {"transfer_miou": "Transfer mIoU (segmentation)",
                      "transfer_map": "Transfer mAP@[.5:.95] (detection)",
                      "transfer_map50": "Transfer AP50 (detection)"}
_OPTIONAL = [("ood_auroc", "OOD AUROC %"), ("maxboxacc", "MaxBoxAccV2 %"), ("effective_classes", "effective classes"),
             *_TRANSFER]
_OPTIONAL_NOTES = {
    "ood_auroc": "OOD AUROC: how well the maximum softmax probability tells the test images from synthetic noise "
                 "images (Gaussian and uniform pixels, mean of the two; 50 is chance, 100 perfect).",
    "maxboxacc": "MaxBoxAccV2: boxes from the true class's CAM thresholded at 0, 0.01, ..., 0.99, the best threshold "
                 "per IoU 30/50/70, averaged (Choe et al. 2020).",
    "effective_classes": "Effective classes: the mean number of classes whose target weight exceeds 1e-4, over each "
                         "run's first training steps (RecursiveMix Fig. 7).",
    "transfer_miou": "Transfer mIoU: the run's backbone, classifier excepted, fine-tuned with its segmenter (an FPN "
                     "head) on the transfer's data and scored on its test split (`mixlab transfer --task "
                     "segmentation`).",
    "transfer_map": "Transfer mAP / AP50: the same with the FCOS detector (`mixlab transfer --task detection`).",
}
# the dense tasks (data.task): their metric, and the time
_TABLE_DENSE = {"segmentation": [("miou", "mIoU %"), ("pixel_acc", "pixel accuracy %"),
                                  ("epoch_time_s", "train s / epoch")],
                "detection": [("map", "mAP@[.5:.95] %"), ("map50", "AP50 %"), ("epoch_time_s", "train s / epoch")]}
_COMPARED = (("top1", "Clean top-1 (last epoch)"), ("fgsm_top1", "FGSM top-1"), ("corruption_top1", "Corruption top-1 (mCA)"))
_COMPARED_SSL = (("knn_top1", "kNN top-1"), ("top1", "Linear-probe top-1"),
                 ("corruption_top1", "Linear-probe corruption top-1 (mCA)"))


def finetune_key(fraction: float) -> str:
    """The results column of a fine-tuning with ``fraction`` of the labels: ``ft10_top1`` for 0.1."""
    return f"ft{100 * fraction:g}_top1"


def _finetune_columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(key, label)`` of the fine-tuning columns the rows have, by increasing fraction."""
    keys = {k for r in rows for k in r if k.startswith("ft") and k.endswith("_top1")}
    pct = lambda k: float(k[2:-len("_top1")])  # noqa: E731
    return [(k, f"fine-tune {pct(k):g} % top-1") for k in sorted(keys, key=pct)]


def _optional_columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(key, label)`` of the :data:`_OPTIONAL` columns that some row has a number in."""
    return [(k, label) for k, label in _OPTIONAL if any(not math.isnan(float(r.get(k, math.nan))) for r in rows)]


def _dense_task(rows: Sequence[dict[str, Any]]) -> str | None:
    """``"segmentation"`` / ``"detection"`` when the rows are of a dense task's runs, else None."""
    for task, key in (("segmentation", "miou"), ("detection", "map")):
        if any(not math.isnan(float(r.get(key, math.nan))) for r in rows):
            return task
    return None


def _self_supervised(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether the rows are of self-supervised methods (scored by their linear probe)."""
    return any(registry.is_self_supervised(method_name(r["method"])) for r in rows)


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    """The run's ``metrics.csv`` as a list of ``{column: float}`` (missing values are NaN)."""
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def _transferred(run_dir: Path, tasks: Sequence[str]) -> dict[str, float]:
    """The ``transfer_*`` columns: each transfer's test metrics (its ``eval.json``), NaN where
    ``tasks`` lacks its task or it has no evaluation."""
    from mixlab.bench.protocols import TRANSFER_METRICS
    from mixlab.engine.transfer import transfer_dir

    scores = {}
    for task in set(TRANSFER_METRICS.values()) & set(tasks):
        try:
            scores[task] = json.loads((transfer_dir(run_dir, task) / "eval.json").read_text())["clean"]
        except (OSError, ValueError, KeyError, TypeError):  # not evaluated (yet)
            pass
    return {key: scores.get(task, {}).get(key[len("transfer_"):], math.nan) for key, task in TRANSFER_METRICS.items()}


def _row(run_dir: Path, method: str, seed: int, transfer: Sequence[str] = ()) -> dict[str, Any]:
    history = read_history(run_dir)
    self_supervised = registry.is_self_supervised(method_name(method))  # evaluated by its linear probe (probe.json)
    ev = json.loads((run_dir / ("probe.json" if self_supervised else "eval.json")).read_text())
    task = ev.get("task", "classification")  # segmentation / detection: mIoU / mAP instead of top-1
    key = "knn_acc1" if self_supervised else \
        {"segmentation": "test_miou", "detection": "test_map"}.get(task, "test_acc1")
    tested = [r for r in history if not math.isnan(r.get(key, math.nan))]  # run.eval_every may skip epochs
    best = max(tested, key=lambda r: r[key])
    try:
        timing = json.loads((run_dir / "bench-timing.json").read_text())
    except (OSError, ValueError):  # trained outside the runner
        timing = {}
    # a segment killed hard (no time recorded) still left its epochs' times in the metrics
    wall = max(timing.get("train_s", 0.0), sum(r["epoch_time"] for r in history)) \
        + timing.get("eval_s", ev.get("seconds", 0.0)) + timing.get("transfer_s", 0.0)
    corr, fgsm, clean = ev.get("corruptions") or {}, ev.get("fgsm") or {}, ev["clean"]
    ood, wsol, effective = ev.get("ood") or {}, ev.get("wsol") or {}, ev.get("effective_classes") or {}
    finetuned = {}
    for path in sorted(run_dir.glob("finetune-*pct/finetune.json")) if self_supervised else ():
        ft = json.loads(path.read_text())
        finetuned[finetune_key(ft["fraction"])] = ft["top1"]
        wall += ft.get("seconds", 0.0)
    return {**finetuned,
        "method": method, "seed": seed, "top1": clean.get("top1", math.nan),
        "knn_top1": history[-1]["knn_acc1"] if self_supervised else math.nan,
        "best_top1": best["test_acc1"] if key == "test_acc1" else math.nan,
        "best_epoch": int(best["epoch"]), "top5": clean.get("top5", math.nan), "nll": clean.get("nll", math.nan),
        "ece": clean.get("ece", math.nan), "rms": clean.get("rms", math.nan),
        **{k: clean.get(k, math.nan) for k in ("miou", "pixel_acc", "map", "map50")},
        **_transferred(run_dir, () if self_supervised else transfer),
        "fgsm_top1": fgsm.get("top1", math.nan), "corruption_top1": corr.get("mCA", math.nan),
        "corruption_images": corr.get("n", 0), "ood_auroc": ood.get("auroc", math.nan),
        "ood_fpr95": ood.get("fpr95", math.nan), "maxboxacc": wsol.get("maxboxacc", math.nan),
        "effective_classes": effective.get("mean", math.nan), "epochs": int(history[-1]["epoch"]),
        # training time only: the per-epoch test pass (run.eval_every) is the protocol's, not the method's
        "epoch_time_s": sum(r.get("train_time", r["epoch_time"]) for r in history) / len(history),
        "images_per_s": sum(r["images_per_s"] for r in history) / len(history), "wall_time_s": wall,
        "run_dir": str(run_dir),
    }


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``results.csv`` (:func:`write_csv`), numbers as floats (``seed``, ``epochs``,
    ``best_epoch``, ``corruption_images`` as ints; empty cells as NaN).

    Raises:
        ValueError: the file is missing or is not a results.csv (no ``method``/``seed``/``top1`` columns).
    """
    try:
        with open(path, newline="") as f:
            raw = list(csv.DictReader(f))
    except OSError as e:
        raise ValueError(f"cannot read results {path}: {e.strerror or e}") from None
    if not raw or not {"method", "seed", "top1"} <= set(raw[0]):
        raise ValueError(f"{path} is not a mixlab results.csv (it needs the columns method, seed, top1)")
    ints = ("seed", "epochs", "best_epoch", "corruption_images")
    text = ("method", "run_dir")
    return [{k: v if k in text else int(float(v)) if k in ints and v else float(v) if v else math.nan
             for k, v in r.items()} for r in raw]


def collect_rows(runs: Sequence[Any], transfer: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One row (``COLUMNS``) per finished run (``status == "done"``), in the given order, with the
    ``transfer_*`` columns of the tasks ``transfer`` (the protocol's ``eval.transfer``)."""
    return [_row(r.dir, r.method, r.seed, transfer) for r in runs if r.status == "done"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1``; NaN for fewer than 2 values), NaNs dropped."""
    xs = [float(v) for v in values if not math.isnan(float(v))]
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else math.nan
    return mean, std


def pooled_std(groups: Sequence[Sequence[float]]) -> float:
    """``sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))`` over the groups with 2+ values; NaN if none."""
    num = den = 0.0
    for g in groups:
        xs = [float(v) for v in g if not math.isnan(float(v))]
        if len(xs) > 1:
            num += (len(xs) - 1) * mean_std(xs)[1] ** 2
            den += len(xs) - 1
    return math.sqrt(num / den) if den else math.nan


def summarize(rows: Sequence[dict[str, Any]], baseline: str = "vanilla") -> list[dict[str, Any]]:
    """One dict per method (in order of first appearance): ``method``, ``n``, ``seeds``, and
    ``(mean, std)`` for every table metric, plus ``time_ratio`` (s / epoch over the baseline's)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        s = {"method": m, "n": len(mine), "seeds": [r["seed"] for r in mine]}
        s.update({key: mean_std([r.get(key, math.nan) for r in mine])
                  for key, _ in (_TABLE + _TABLE_SSL + _OPTIONAL + sum(_TABLE_DENSE.values(), [])
                                 + _finetune_columns(rows))})
        out.append(s)
    base = next((s for s in out if s["method"] == baseline), None)
    for s in out:
        s["time_ratio"] = s["epoch_time_s"][0] / base["epoch_time_s"][0] if base else math.nan
    return out


def _pm(mean: float, std: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if not math.isnan(std) else "")


def compare_to_baseline(rows: Sequence[dict[str, Any]], key: str = "top1", label: str = "last-epoch test top-1",
                        baseline: str = "vanilla") -> str:
    """One plain-language sentence: which methods differ from ``baseline`` on ``key`` by more than
    2 x the pooled seed-to-seed standard deviation (see the module docstring), and which do not."""
    groups: dict[str, list[float]] = {}
    for r in rows:  # (merged rows of an older results.csv may lack a column)
        groups.setdefault(r["method"], []).append(r.get(key, math.nan))
    others = [m for m in groups if m != baseline]
    if baseline not in groups or not others:
        return f"{label}: nothing to compare ({baseline} and at least one other method need finished runs)."
    base = mean_std(groups[baseline])[0]
    delta = {m: mean_std(groups[m])[0] - base for m in others}
    s = pooled_std(list(groups.values()))
    if math.isnan(s):
        return (f"{label}: {baseline} {base:.2f}; differences " + ", ".join(f"{m} {delta[m]:+.2f}" for m in others)
                + " (one seed per method: no spread to judge them by).")
    verdicts = {"better than": [m for m in others if delta[m] > 2 * s],
                "worse than": [m for m in others if delta[m] < -2 * s],
                "within the seed-to-seed spread of": [m for m in others if abs(delta[m]) <= 2 * s]}
    said = [f"{', '.join(f'{m} ({delta[m]:+.2f})' for m in ms)} {'is' if len(ms) == 1 else 'are'} {verdict} {baseline}"
            for verdict, ms in verdicts.items() if ms]
    return f"{label} ({baseline} {base:.2f}, threshold 2 x {s:.2f} = {2 * s:.2f} points): " + "; ".join(said) + "."


def check_claim(rows: Sequence[dict[str, Any]], method: str, baseline: str, claim: str, key: str = "top1") -> str:
    """One sentence on a paper's claim that ``method`` beats ``baseline`` on ``key``: the measured
    difference and whether it exceeds 2 x the pooled seed-to-seed std of the two (the screen of
    :func:`compare_to_baseline`). "Beats" is "is lower" for the metrics that
    :data:`~mixlab.bench.protocols.CLAIM_METRICS` marks lower-is-better (ECE, RMS, NLL)."""
    a = [r[key] for r in rows if r["method"] == method and not math.isnan(float(r.get(key, math.nan)))]
    b = [r[key] for r in rows if r["method"] == baseline and not math.isnan(float(r.get(key, math.nan)))]
    if not a or not b:
        with_key = "" if key == "top1" else f" with {key}"  # e.g. a protocol that stopped measuring it
        return f"{claim}: not checked ({method if not a else baseline} has no finished run{with_key})."
    delta = mean_std(a)[0] - mean_std(b)[0]
    gain = -delta if CLAIM_METRICS.get(key) == "lower" else delta
    s = pooled_std([a, b])
    metric = "" if key == "top1" else f"{key} " + ("(lower is better) " if gain != delta else "")
    unit = "classes" if key == "effective_classes" else "points"
    head = f"{claim}: {metric}{method} {mean_std(a)[0]:.2f} vs {baseline} {mean_std(b)[0]:.2f} ({delta:+.2f} {unit}"
    if math.isnan(s):
        return head + "; one seed each: no spread to judge by)."
    if gain > 2 * s:
        verdict = "supported here"
    elif gain < -2 * s:
        verdict = "contradicted here (the difference is the other way, beyond the spread)"
    else:
        verdict = "not resolved here (within the spread)"
    return head + f", threshold 2 x {s:.2f} = {2 * s:.2f}): {verdict}."


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """``results.csv``: one row per run, the columns of :data:`COLUMNS` (and ``ft<pct>_top1``, the
    test top-1 % of each fine-tuning with <pct> % of the labels, for self-supervised runs that have them)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS) + [k for k, _ in _finetune_columns(rows)])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


def reference_column(protocol: Any, methods: Sequence[str], rows: Sequence[dict[str, Any]] = ()
                     ) -> tuple[list[str], list[list[str]], str] | None:
    """The protocol's published top-1 (``protocol.references``, see :mod:`mixlab.bench.protocols`)
    as results.md columns beside mixlab's top-1: ``(headers, one row of cells per method, a
    sentence naming the source)``; None when the protocol has no references. The columns are
    mixlab's median test top-1 over the last 10 epochs (each run's metrics.csv; mean ± std over
    seeds), the statistic such tables report, then the published number ("—" where the source
    has none)."""
    ref = getattr(protocol, "references", None)
    if ref is None:
        return None
    cells = []
    for m in methods:
        medians = []
        for r in rows:
            if r["method"] != m:
                continue
            try:
                history = read_history(r["run_dir"])
            except (OSError, KeyError, TypeError):  # a merged row whose run directory is elsewhere
                continue
            last = max((h["epoch"] for h in history), default=0)
            tested = [h.get("test_acc1", math.nan) for h in history if h["epoch"] > last - 10]
            tested = [t for t in tested if not math.isnan(t)]  # run.eval_every may skip epochs
            if tested:
                medians.append(statistics.median(tested))
        cells.append([_pm(*mean_std(medians)) if medians else "–", f"{ref.top1[m]:.2f}" if m in ref.top1 else "—"])
    return (["median top-1 %, last 10 epochs", f"{ref.name} top-1 %"], cells,
            f"{ref.name} top-1 %: the published numbers, from {ref.source}. Median top-1, last 10 epochs: the median "
            f"of each run's test top-1 over its last 10 epochs, mean ± std over seeds.")


def _duration(seconds: float) -> str:
    h, rest = divmod(round(seconds), 3600)
    return f"{h} h {rest // 60:02d} min" if h else f"{rest // 60} min {rest % 60:02d} s"


def write_markdown(rows: Sequence[dict[str, Any]], path: str | Path, *, protocol: Any, commands: Sequence[str],
                   machines: Sequence[str], wall_clock_s: float, missing: Sequence[str] = (),
                   baseline: str = "vanilla", merged: Sequence[tuple[str, Sequence[str]]] = ()) -> str:
    """``results.md``: the per-method table (mean ± std over seeds), the seed-to-seed spread, the
    generated comparison with ``baseline``, the commands, machines and wall-clock time. Returns the text."""
    ssl, task = _self_supervised(rows), _dense_task(rows)
    table, compared = (_TABLE_SSL, _COMPARED_SSL) if ssl else (_TABLE, _COMPARED)
    if task is not None:  # one metric, no FGSM / corruptions
        table = _TABLE_DENSE[task]
        compared = tuple((k, f"Test {label[:-2]} (last epoch)") for k, label in table[:2])
    if ssl:  # the fine-tunings with a fraction of the labels, after the linear probe
        table = table[:2] + _finetune_columns(rows) + table[2:]
        compared = compared[:2] + tuple((k, label.capitalize()) for k, label in _finetune_columns(rows)) + compared[2:]
    elif task is None:  # the OOD score, the localization, the effective classes, the transfers, where measured
        table = table[:-1] + _optional_columns(rows) + table[-1:]
        compared += tuple((k, _TRANSFER_COMPARED[k]) for k, _ in _optional_columns(rows) if k in _TRANSFER_COMPARED)
    if rows and baseline not in {r["method"] for r in rows}:
        baseline = rows[0]["method"]  # a protocol without vanilla: its first method
    summary = summarize(rows, baseline)
    header = ["method", "seeds"] + [label for _, label in table] + [f"time vs {baseline}"]
    reference = reference_column(protocol, [s["method"] for s in summary], rows)  # beside the top-1 column
    if reference:
        header[3:3] = reference[0]
    lines = [f"# Benchmark `{protocol.name}`", "", protocol.description, "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, s in enumerate(summary):
        ratio = f"{s['time_ratio']:.2f}x" if not math.isnan(s["time_ratio"]) else "–"
        cells = [s["method"], str(s["n"])] + [_pm(*s[k], digits=1 if k == "epoch_time_s" else 2) for k, _ in table]
        if reference:
            cells[3:3] = reference[1][i]
        lines.append("| " + " | ".join(cells + [ratio]) + " |")
    if reference:
        lines += ["", reference[2]]
    main = compared[0][0] if task is not None else "top1"
    spread = pooled_std([[r[main] for r in rows if r["method"] == s["method"]] for s in summary])
    spread_text = (f"{spread:.2f} points (pooled over the methods with 2+ seeds)" if not math.isnan(spread)
                   else "unknown (one seed per method)")
    what = ("Mean ± sample std over seeds; every number on the test split, after the last epoch: the kNN monitor "
            "(k 200, T 0.1, the training images as memory bank) and a linear probe on the frozen backbone (SGD, no "
            "weight decay, on cached features of the training images), evaluated clean and under "
            if ssl else
            "Mean ± sample std over seeds; every number on the test split, at the last epoch (the best-epoch "
            "accuracy is only in results.csv, labelled best_top1). Calibration: 15 bins. FGSM: eps = 8/255. "
            "Corruptions: ")
    if task is not None:
        what = ("Mean ± sample std over seeds; every number on the test split, at the last epoch: " +
                ("mIoU over the classes present in the labels or the predictions (background included, ignored "
                 "pixels left out) and pixel accuracy." if task == "segmentation" else
                 "COCO box mAP@[.50:.95] and AP50 by pycocotools' COCOeval (100 detections per image)."))
    else:
        what += (f"{len(CORRUPTIONS)} kinds of corruption x severities 1-5 on {_corruption_images(rows)} test images."
                 + (" Fine-tune k %: the whole network trained end to end from the pre-trained "
                    "weights, with a fresh classifier, on a class-balanced k % of the training images "
                    "with their labels (`mixlab finetune`), tested once after its last epoch."
                    if ssl and _finetune_columns(rows) else "")
                 + "".join(" " + _OPTIONAL_NOTES[k] for k, _ in _optional_columns(rows)
                           if not ssl and k in _OPTIONAL_NOTES))
    lines += ["", what,
              "", f"Seed-to-seed std of {'linear-probe ' if ssl else ''}{'top-1' if task is None else main}: "
                  f"{spread_text}.", "",
              "## Which methods differ from " + baseline, ""]
    lines.append(f"A method differs from {baseline} when its mean is more than 2 x the pooled seed-to-seed std away "
                 f"from {baseline}'s (pooled over the methods with 2+ seeds; with 3 seeds that is about 2.4 standard "
                 f"errors of the difference: a screen against seed noise, not a significance test). Differences "
                 f"are in percentage points.")
    lines += [""] + [f"- {compare_to_baseline(rows, key, label, baseline)}" for key, label in compared]
    claims = getattr(protocol, "claims", ())
    if claims:
        lines += ["", "## The papers' claims", ""]
        for c in claims:  # self-supervised: on the kNN monitor, the linear probe and each fine-tuning
            lines += [f"- {check_claim(rows, c.method, c.baseline, c.claim + (f' [{label}]' if ssl else ''), key)}"
                      for key, label in (compared[:-1] if ssl else ((getattr(c, "metric", "top1"), ""),))]
    lines += ["", "## How it was run", ""]
    lines += [f"- command: `{c}`" for c in commands]
    lines += [f"- machine: {m}" for m in machines]
    lines.append(f"- total wall-clock time: {_duration(wall_clock_s)} (all invocations); "
                 f"sum over runs: {_duration(sum(r['wall_time_s'] for r in rows))}")
    for source, names in merged:
        lines.append(f"- {len(names)} run(s) taken from {source} (its results.md says how they were run; their "
                     f"wall-clock time is not in the total above): {', '.join(names)}")
    if missing:
        lines.append(f"- not finished, so not in the table ({len(missing)}): {', '.join(missing)}")
    text = "\n".join(lines) + "\n"
    Path(path).write_text(text)
    return text


def _corruption_images(rows: Sequence[dict[str, Any]]) -> str:
    counts = sorted({int(r["corruption_images"]) for r in rows})
    return "/".join(map(str, counts)) or "0"
