"""Benchmark protocols: a fixed training config, the methods to compare, the seeds, the evaluation.

A protocol is a YAML file shipped in ``mixlab/bench/protocols/`` (or any file given by its path)::

    description: one paragraph saying what the protocol measures and what it costs
    base:                  # a TrainConfig, as in mixlab/configs/default.yaml (no method, seed, out)
      data: {name: imagefolder, root: ../shared/data/cifar10-jpeg.zip, train_per_class: 100}
      model: {name: resnet_small}
      optim: {name: sgd, lr: 0.1, epochs: 120}
    methods:               # method name -> overrides of its paper defaults ({} keeps them)
      vanilla: {}
      mixup: {alpha: 1.0}
      rrc@0.01: {scale: [0.01, 1.0]}   # "name@variant": method "name" again, with other parameters
    seeds: [0, 1, 2]
    eval: {max_corruption_images: 1000, fgsm: true, corruptions: true, ood: true}
    # datasets with boxes (synthetic, cub200): wsol (MaxBoxAccV2; default: when the test split has boxes) and
    #   effective_classes: N (the effective class number over each run's first N steps; default 0: not measured)
    # self-supervised protocols: probe_epochs (linear probe) and the fine-tunings with a fraction of the labels:
    #   finetune: {fractions: [0.01, 0.1], epochs: 30, lr: 0.001, optimizer: adamw, weight_decay: 0.05,
    #              head_lr_scale: 1.0, method: vanilla, batch_size: 128}     (mixlab finetune's arguments)
    # supervised classification protocols: transfer: [segmentation, detection] fine-tunes each run's backbone on
    #   the dense tasks (mixlab transfer's defaults, <run>/transfer-<task>; results columns transfer_miou,
    #   transfer_map, transfer_map50), with transfer_overrides: [optim.epochs=5, ...] applied to every transfer
    claims:                # optional: the papers' claims the results check (method vs baseline, top-1)
      - {method: mixup, baseline: vanilla, claim: "Mixup beats ERM (Zhang et al. 2018, Table 1)"}
      - {method: regmixup, baseline: mixup, metric: ece, claim: "..."}   # another results column (lower ECE wins)
      - {method: automix, baseline: cutmix, metric: maxboxacc, claim: "..."}   # localization (eval.json's wsol)
      - {method: cutmix, baseline: vanilla, metric: transfer_miou, claim: "..."}   # needs eval.transfer
    overrides:             # optional: config keys one method label sets differently from base
      automix: {optim.min_lr: 0.05}
    references:            # optional: published top-1 per method label, a column of results.md beside mixlab's
      name: openmixup      # the column is "<name> top-1 %"
      source: "docs/en/mixup_benchmarks/Mixup_cifar.md of Westlake-AI/openmixup at commit ..."
      top1: {vanilla: 76.42, mixup: 78.52}
    extends: cifar100-openmixup   # optional: start from another protocol (a shipped name or a path): this
                                  # file's keys replace its keys, except base, merged section by section

A protocol that ``extends`` another one says only what differs (e.g. the epochs and the published
numbers of another budget).

    >>> protocol = load_protocol("cifar10-quick")
    >>> cfg = protocol.config("mixup", seed=0)      # the TrainConfig of one run
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from mixlab import registry
from mixlab.engine.config import TrainConfig, config_from_dict, resolve_key, set_value, validate_config

__all__ = ["Protocol", "Claim", "CLAIM_METRICS", "TRANSFER_METRICS", "EvalSettings", "FinetuneSettings", "References",
           "list_protocols", "load_protocol", "protocol_from_dict", "method_name"]

_KEYS = ("description", "base", "methods", "seeds", "eval", "claims", "overrides", "references")
_REFERENCE_KEYS = ("name", "source", "top1")
_CLAIM_KEYS = ("method", "baseline", "claim")  # and optionally "metric"
#: the results.csv columns a claim may compare, and which way is better on each
CLAIM_METRICS = {"top1": "higher", "top5": "higher", "fgsm_top1": "higher", "corruption_top1": "higher",
                 "knn_top1": "higher", "ece": "lower", "rms": "lower", "nll": "lower", "maxboxacc": "higher",
                 "ood_auroc": "higher", "ood_fpr95": "lower", "effective_classes": "higher",
                 "miou": "higher", "pixel_acc": "higher", "map": "higher", "map50": "higher",  # dense tasks: these 4
                 # eval.transfer: the transferred backbones' segmentation mIoU and detection mAP / AP50
                 "transfer_miou": "higher", "transfer_map": "higher", "transfer_map50": "higher"}
#: the task of eval.transfer each transfer_* claim metric needs
TRANSFER_METRICS = {"transfer_miou": "segmentation", "transfer_map": "detection", "transfer_map50": "detection"}
_EVAL_KEYS = ("max_corruption_images", "fgsm", "corruptions", "ood", "wsol", "effective_classes", "probe_epochs",
              "finetune", "transfer", "transfer_overrides")
# set by the runner on every transfer (where it writes, what it continues, its weights, when it stops)
_TRANSFER_RUNNER_KEYS = ("run.out", "run.resume", "model.init", "run.stop_epoch")
# set per run by the runner, so a protocol must leave them alone
_RUNNER_KEYS = ("method.name", "method.params", "run.seed", "run.out", "run.resume", "run.stop_epoch")


def method_name(label: str) -> str:
    """The registry name of a protocol's method label: ``"rrc@0.01"`` -> ``"rrc"`` (a label without
    ``@`` is the name itself). Variants let one method appear with several parameter sets."""
    return label.partition("@")[0]


@dataclass(frozen=True)
class FinetuneSettings:
    """The fine-tunings of each self-supervised run (:func:`mixlab.engine.finetune.finetune`): one
    per fraction of the labels, each with the same recipe (none when ``fractions`` is empty)."""

    fractions: tuple[float, ...] = ()
    epochs: int = 30
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    head_lr_scale: float = 1.0
    method: str = "vanilla"
    batch_size: int = 128

    def recipe(self) -> dict[str, Any]:
        """The keyword arguments of ``finetune`` besides ``fraction`` (and what ``finetune.json`` records)."""
        return {k: getattr(self, k) for k in ("epochs", "lr", "optimizer", "weight_decay", "head_lr_scale", "method",
                                              "batch_size")}


@dataclass(frozen=True)
class EvalSettings:
    """How each finished run is evaluated (:func:`mixlab.engine.eval_run.evaluate_checkpoint`)."""

    max_corruption_images: int | None = None  # corruption accuracy on the first N test images (None: all)
    fgsm: bool = True
    corruptions: bool = True
    ood: bool = True  # out-of-distribution detection against the synthetic noise sets
    wsol: bool | None = None  # MaxBoxAccV2: None when the test split has boxes, True required, False never
    effective_classes: int = 0  # the effective class number over each run's first N steps (0: not measured)
    probe_epochs: int = 100  # self-supervised runs: epochs of the linear probe (``mixlab probe``)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)  # self-supervised runs' fine-tunings
    transfer: tuple[str, ...] = ()  # supervised runs: the dense tasks their backbone is transferred to
    transfer_overrides: tuple[str, ...] = ()  # key=value overrides of every transfer (after TRANSFER_DEFAULTS)


@dataclass(frozen=True)
class Claim:
    """A paper's claim that ``method`` beats ``baseline`` (both labels of the protocol's methods) on
    ``metric``, a column of :data:`CLAIM_METRICS` (default top-1; "beats" is "lower" for ECE)."""

    method: str
    baseline: str
    claim: str
    metric: str = "top1"


@dataclass(frozen=True)
class References:
    """Published top-1 % of some of the protocol's method labels (``top1``), from ``source`` (a
    document and version anyone can open), shown by the report as the column "<name> top-1 %"."""

    name: str
    source: str
    top1: dict[str, float]


@dataclass(frozen=True)
class Protocol:
    """A validated protocol; :meth:`config` gives the TrainConfig of one (method, seed) run."""

    name: str
    description: str
    base: TrainConfig
    methods: dict[str, dict[str, Any]]
    seeds: tuple[int, ...]
    eval: EvalSettings = field(default_factory=EvalSettings)
    claims: tuple[Claim, ...] = ()
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # method label -> {dotted key: value}
    references: References | None = None

    def config(self, method: str, seed: int) -> TrainConfig:
        """``base`` with the label's ``overrides``, ``method.name``, ``method.params`` and ``run.seed`` set.

        Raises:
            ValueError: ``method`` is not one of the protocol's methods (they are listed).
        """
        if method not in self.methods:
            raise ValueError(f"protocol {self.name!r} has no method {method!r}; its methods: {', '.join(self.methods)}")
        cfg = copy.deepcopy(self.base)
        for key, value in self.overrides.get(method, {}).items():
            set_value(cfg, key, copy.deepcopy(value))
        cfg.method.name, cfg.method.params = method_name(method), copy.deepcopy(self.methods[method])
        cfg.run.seed = seed
        return cfg


def _packaged() -> dict[str, Any]:
    """``{name: resource}`` of the protocols shipped with mixlab."""
    folder = resources.files("mixlab.bench") / "protocols"
    return {p.name[: -len(".yaml")]: p for p in folder.iterdir() if p.name.endswith(".yaml")}


def list_protocols() -> dict[str, str]:
    """``{name: description}`` of the shipped protocols, sorted by name (read, not validated)."""
    out = {}
    for name, resource in sorted(_packaged().items()):
        try:
            data = yaml.safe_load(resource.read_text())
        except yaml.YAMLError:
            data = None
        description = data.get("description") if isinstance(data, dict) else None
        out[name] = " ".join(str(description or "").split())
    return out


def load_protocol(name_or_path: str | Path) -> Protocol:
    """A shipped protocol by name (``"cifar10-quick"``), or a protocol YAML file by path.

    Raises:
        ValueError: unknown name (the shipped ones are listed), unparsable YAML, an ``extends``
            chain that loops or an invalid protocol.
    """
    name, data, folder = _read(name_or_path)
    return protocol_from_dict(_extended(data, name, folder, (name,)), name)


def _read(name_or_path: str | Path) -> tuple[str, Any, Path | None]:
    """``(name, parsed YAML, the file's folder or None for a shipped protocol)``."""
    packaged = _packaged()
    text: str
    folder = None
    if str(name_or_path) in packaged:
        name, text = str(name_or_path), packaged[str(name_or_path)].read_text()
    elif Path(name_or_path).suffix in (".yaml", ".yml") and Path(name_or_path).is_file():
        name, text, folder = Path(name_or_path).stem, Path(name_or_path).read_text(), Path(name_or_path).parent
    elif Path(name_or_path).suffix in (".yaml", ".yml"):
        raise ValueError(f"protocol file {name_or_path} not found (shipped protocols: {', '.join(sorted(packaged))})")
    else:
        close = difflib.get_close_matches(str(name_or_path), list(packaged), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown protocol {str(name_or_path)!r}{hint}; available: {', '.join(sorted(packaged))} "
                         f"(or the path of a protocol .yaml file)")
    try:
        return name, yaml.safe_load(text), folder
    except yaml.YAMLError as e:
        raise ValueError(f"protocol {name!r}: cannot parse the YAML: {e}") from None


def _extended(data: Any, name: str, folder: Path | None, chain: tuple[str, ...]) -> Any:
    """``data`` on top of the protocol it ``extends`` (recursively): its keys replace the parent's,
    except ``base``, whose sections are merged key by key. A relative .yaml path is taken from the
    extending file's ``folder``."""
    if not isinstance(data, dict) or "extends" not in data:
        return data
    parent_name = data["extends"]
    if not isinstance(parent_name, str) or not parent_name:
        raise ValueError(f"protocol {name!r}: extends must be a protocol name or .yaml path, got {parent_name!r}")
    if folder is not None and Path(parent_name).suffix in (".yaml", ".yml") and not Path(parent_name).is_absolute():
        parent_name = str(folder / parent_name)
    if parent_name in chain:
        raise ValueError(f"protocol {name!r}: extends loops: {' -> '.join((*chain, parent_name))}")
    _, parent_data, parent_folder = _read(parent_name)
    parent = _extended(parent_data, parent_name, parent_folder, (*chain, parent_name))
    if not isinstance(parent, dict):
        raise ValueError(f"protocol {name!r}: extends {parent_name!r}, which is not a mapping")
    merged = {**parent, **{k: v for k, v in data.items() if k not in ("extends", "base")}}
    base, own = copy.deepcopy(parent.get("base") or {}), data.get("base") or {}
    if not isinstance(base, dict) or not isinstance(own, dict):
        raise ValueError(f"protocol {name!r}: base must be a mapping of config sections, got {own!r}")
    for section, values in own.items():
        base[section] = ({**base[section], **values} if isinstance(base.get(section), dict) and isinstance(values, dict)
                         else values)
    return {**merged, "base": base}


def _finetune_settings(d: Any, fail: Callable[[str], ValueError]) -> FinetuneSettings:
    """``eval.finetune`` checked (each key named in the error) and turned into :class:`FinetuneSettings`."""
    keys = [f.name for f in fields(FinetuneSettings)]
    if not isinstance(d, dict) or any(k not in keys for k in d):
        raise fail(f"eval.finetune must be a mapping with keys among {', '.join(keys)}, got {d!r}")
    integer = lambda v, low: isinstance(v, int) and not isinstance(v, bool) and v >= low  # noqa: E731
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    fractions = d.get("fractions", [])
    if (not isinstance(fractions, list) or len(set(fractions)) != len(fractions)
            or not all(number(f) and 0 < f <= 1 for f in fractions)):
        raise fail(f"eval.finetune.fractions must be a list of distinct numbers in (0, 1] (e.g. [0.01, 0.1]), "
                   f"got {fractions!r}")
    checks = {"epochs": (lambda v: integer(v, 1), "an integer >= 1"), "lr": (lambda v: number(v) and v > 0, "a number > 0"),
              "optimizer": (lambda v: v in ("adamw", "sgd"), "'adamw' or 'sgd'"),
              "weight_decay": (lambda v: number(v) and v >= 0, "a number >= 0"),
              "head_lr_scale": (lambda v: number(v) and v > 0, "a number > 0"),
              "method": (lambda v: isinstance(v, str) and v in registry.METHODS, "a method name (see mixlab list)"),
              "batch_size": (lambda v: integer(v, 2), "an integer >= 2")}
    for key, (ok, accepted) in checks.items():
        if key in d and not ok(d[key]):
            raise fail(f"eval.finetune.{key} must be {accepted}, got {d[key]!r}")
    floats = {k: float(d[k]) for k in ("lr", "weight_decay", "head_lr_scale") if k in d}
    return FinetuneSettings(**{**d, **floats, "fractions": tuple(float(f) for f in fractions)})


def _transfer_settings(tasks: Any, overrides: Any, base: TrainConfig, methods: dict[str, dict[str, Any]],
                       fail: Callable[[str], ValueError]) -> dict[str, tuple[str, ...]]:
    """``eval.transfer`` and ``eval.transfer_overrides`` checked: distinct dense tasks of
    :data:`~mixlab.engine.transfer.TRANSFER_DEFAULTS`, in a supervised classification protocol;
    ``key=value`` strings that make a valid transfer config of ``base`` for each task and leave alone
    the keys the runner sets."""
    from mixlab.engine.transfer import TRANSFER_DEFAULTS, transfer_config_from

    tasks = [] if tasks is None else tasks
    if (not isinstance(tasks, list) or len(set(map(str, tasks))) != len(tasks)
            or any(not isinstance(t, str) or t not in TRANSFER_DEFAULTS for t in tasks)):
        raise fail(f"eval.transfer must be a list of distinct tasks among {', '.join(TRANSFER_DEFAULTS)} "
                   f"(e.g. [segmentation, detection]), got {tasks!r}")
    overrides = [] if overrides is None else overrides
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise fail(f"eval.transfer_overrides must be a list of key=value strings (e.g. [optim.epochs=5]), "
                   f"got {overrides!r}")
    if tasks and base.data.task != "classification":
        raise fail(f"eval.transfer transfers classification backbones; this protocol's task is {base.data.task!r}")
    ssl = [m for m in methods if registry.is_self_supervised(method_name(m))]
    if tasks and ssl:
        raise fail(f"eval.transfer transfers supervised runs' backbones; {', '.join(ssl)} "
                   f"{'is' if len(ssl) == 1 else 'are'} self-supervised")
    taken = [o for o in overrides if resolve_key(o.partition("=")[0].strip()) in _TRANSFER_RUNNER_KEYS]
    if taken:
        raise fail(f"eval.transfer_overrides: {', '.join(map(repr, taken))} sets a key the runner sets on every "
                   f"transfer ({', '.join(_TRANSFER_RUNNER_KEYS)})")
    for task in tasks:  # (the transfers' datasets and models are checked when built, as a dense protocol's)
        try:
            transfer_config_from(base, "checkpoint.pt", task, overrides)  # (any run's checkpoint)
        except ValueError as e:
            raise fail(f"eval.transfer_overrides of the transfer to {task}: {e}") from None
    return {"transfer": tuple(tasks), "transfer_overrides": tuple(overrides)}


def protocol_from_dict(data: Any, name: str = "protocol") -> Protocol:
    """Validate a protocol given as a dict (the parsed YAML).

    Raises:
        ValueError: a missing or unknown top-level key, a base config key the runner sets or that
            TrainConfig does not know, an unknown method or method hyper-parameter, bad seeds or
            eval settings, overrides of labels the protocol lacks or of keys a label may not set,
            malformed references; the message names the protocol and the key.
    """
    def fail(msg: str) -> ValueError:
        return ValueError(f"protocol {name!r}: {msg}")

    if not isinstance(data, dict):
        raise fail(f"must be a mapping with keys {', '.join(_KEYS)}, got {type(data).__name__}")
    unknown = [k for k in data if k not in _KEYS]
    if unknown:
        raise fail(f"unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(_KEYS)}")
    missing = [k for k in ("base", "methods", "seeds") if k not in data]
    if missing:
        raise fail(f"missing key(s) {', '.join(missing)}")

    base_dict = data["base"]
    if not isinstance(base_dict, dict):
        raise fail(f"base must be a mapping of config sections, got {base_dict!r}")
    taken = [f"{s}.{k}" for s, values in base_dict.items() if isinstance(values, dict) for k in values
             if f"{s}.{k}" in _RUNNER_KEYS]
    if taken:
        raise fail(f"base sets {', '.join(taken)}, which the runner sets per run (use 'methods' and 'seeds')")
    try:
        base = config_from_dict(base_dict, source=f"protocol {name!r} base")
        task = base.data.task
        dense = task != "classification"  # segmentation / detection: mixlab.registry.DENSE_METHODS
        validate_config(base)
        if dense:  # (its datasets and models are checked when built)
            if data.get("eval") is None or any((data.get("eval") or {}).get(k, True) for k in ("fgsm", "corruptions")):
                raise ValueError(f"a {task} protocol is scored by its task's metric: its eval must say fgsm: false "
                                 f"and corruptions: false (classification's), got {data.get('eval')!r}")
        else:
            registry.check_names(model=base.model.name, dataset=base.data.name)
    except ValueError as e:
        raise fail(str(e)) from None

    methods = data["methods"]
    if not isinstance(methods, dict) or not methods:
        raise fail(f"methods must be a non-empty mapping of method name -> parameters, got {methods!r}")
    for method, params in methods.items():
        if not isinstance(params, (dict, type(None))):
            raise fail(f"the parameters of method {method!r} must be a mapping (or {{}}), got {params!r}")
        try:  # names, then values: building a method is cheap and checks its hyper-parameters
            if "@" in str(method) and not str(method).partition("@")[2]:
                raise ValueError(f"method label {method!r} has an empty variant after '@' (e.g. 'rrc@0.01')")
            if dense:
                registry.check_dense_method(task, method_name(str(method)), params)
            else:
                registry.build_method(method_name(str(method)), 10, base.method.label_smoothing, **(params or {}))
        except (ValueError, TypeError) as e:
            raise fail(str(e)) from None
    methods = {str(m): dict(p or {}) for m, p in methods.items()}

    seeds = data["seeds"]
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise fail(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise fail(f"seeds must be distinct, got {seeds!r}")

    ev = data.get("eval") or {}
    if not isinstance(ev, dict) or any(k not in _EVAL_KEYS for k in ev):
        raise fail(f"eval must be a mapping with keys among {', '.join(_EVAL_KEYS)}, got {ev!r}")
    n = ev.get("max_corruption_images")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise fail(f"eval.max_corruption_images must be null (all test images) or an integer >= 1, got {n!r}")
    for key in ("fgsm", "corruptions", "ood"):
        if not isinstance(ev.get(key, True), bool):
            raise fail(f"eval.{key} must be true or false, got {ev[key]!r}")
    if ev.get("wsol") not in (None, True, False):
        raise fail(f"eval.wsol must be true, false or null (when the test split has boxes), got {ev['wsol']!r}")
    n = ev.get("effective_classes", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise fail(f"eval.effective_classes must be an integer >= 0 (training steps; 0: not measured), got {n!r}")
    e = ev.get("probe_epochs", 100)
    if isinstance(e, bool) or not isinstance(e, int) or e < 1:
        raise fail(f"eval.probe_epochs must be an integer >= 1, got {e!r}")
    ev = {**ev, "finetune": _finetune_settings(ev.get("finetune") or {}, fail),
          **_transfer_settings(ev.get("transfer"), ev.get("transfer_overrides"), base, methods, fail)}
    claims = data.get("claims") or []
    if not isinstance(claims, list):
        raise fail(f"claims must be a list of {{method, baseline, claim}} mappings, got {claims!r}")
    for c in claims:
        if (not isinstance(c, dict) or sorted(set(c) - {"metric"}) != sorted(_CLAIM_KEYS)
                or not all(isinstance(v, str) for v in c.values())):
            raise fail(f"each claim must be a mapping with string keys {', '.join(_CLAIM_KEYS)} (and optionally "
                       f"metric), got {c!r}")
        if c.get("metric", "top1") not in CLAIM_METRICS:
            raise fail(f"claim {c['claim']!r}: metric must be one of {', '.join(CLAIM_METRICS)}, got {c['metric']!r}")
        needs = TRANSFER_METRICS.get(c.get("metric", "top1"))
        if needs is not None and needs not in ev["transfer"]:
            raise fail(f"claim {c['claim']!r}: metric {c['metric']} is measured by the transfer to "
                       f"{TRANSFER_METRICS[c['metric']]}, which eval.transfer does not list (it lists "
                       f"{list(ev['transfer'])})")
        if c.get("metric") == "effective_classes" and not ev.get("effective_classes"):
            raise fail(f"claim {c['claim']!r}: metric effective_classes needs eval.effective_classes (the "
                       f"number of training steps to count over), which is 0")
        for key in ("method", "baseline"):
            if c[key] not in methods:
                raise fail(f"claim {c['claim']!r}: {key} {c[key]!r} is not one of the protocol's methods")
    overrides = _overrides(data.get("overrides") or {}, base, methods, fail)
    references = _references(data["references"], methods, fail) if data.get("references") is not None else None
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise fail(f"description must be a string, got {description!r}")
    return Protocol(name=name, description=" ".join(description.split()), base=base, methods=methods,
                    seeds=tuple(seeds), eval=EvalSettings(**ev), claims=tuple(Claim(**c) for c in claims),
                    overrides=overrides, references=references)


def _overrides(d: Any, base: TrainConfig, methods: dict[str, dict[str, Any]],
               fail: Callable[[str], ValueError]) -> dict[str, dict[str, Any]]:
    """``overrides`` checked: each label is one of ``methods``, each key a config key the runner
    does not set (aliases resolved), each value valid in the label's config."""
    if not isinstance(d, dict) or not all(isinstance(v, dict) for v in d.values()):
        raise fail(f"overrides must map method labels to {{config key: value}} mappings "
                   f"(e.g. {{automix: {{optim.min_lr: 0.05}}}}), got {d!r}")
    out = {}
    for label, values in d.items():
        if label not in methods:
            raise fail(f"overrides: {label!r} is not one of the protocol's methods ({', '.join(methods)})")
        keys = {k: resolve_key(str(k)) for k in values}
        bad = [k for k, key in keys.items() if key is None or key in _RUNNER_KEYS or key.startswith("method.")]
        if bad:
            raise fail(f"overrides of {label!r}: {', '.join(map(repr, bad))} is not a config key a method label may "
                       f"set (data/model/optim/run keys such as optim.min_lr; not the method or what the runner sets)")
        cfg = copy.deepcopy(base)
        try:
            for k, value in values.items():
                set_value(cfg, keys[k], value)
            validate_config(cfg)
        except ValueError as e:
            raise fail(f"overrides of {label!r}: {e}") from None
        out[str(label)] = {keys[k]: v for k, v in values.items()}
    return out


def _references(d: Any, methods: dict[str, dict[str, Any]], fail: Callable[[str], ValueError]) -> References:
    """``references`` checked: a name, a source and a top-1 % in [0, 100] per method label."""
    if not isinstance(d, dict) or sorted(d) != sorted(_REFERENCE_KEYS):
        raise fail(f"references must be a mapping with keys {', '.join(_REFERENCE_KEYS)}, got {d!r}")
    for key in ("name", "source"):
        if not isinstance(d[key], str) or not d[key].strip():
            raise fail(f"references.{key} must be a non-empty string, got {d[key]!r}")
    top1 = d["top1"]
    if not isinstance(top1, dict) or not top1:
        raise fail(f"references.top1 must map method labels to published top-1 %, got {top1!r}")
    for label, value in top1.items():
        if label not in methods:
            raise fail(f"references.top1: {label!r} is not one of the protocol's methods ({', '.join(methods)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise fail(f"references.top1.{label} must be a top-1 % in [0, 100], got {value!r}")
    return References(name=d["name"].strip(), source=" ".join(d["source"].split()),
                      top1={str(k): float(v) for k, v in top1.items()})
