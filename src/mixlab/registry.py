"""Every name the CLI and the configs accept, in one visible place: plain dicts, no decorators.

* :data:`METHODS`: training objectives, ``name -> MethodSpec`` (constructor, paper, defaults).
* models: :data:`mixlab.models.MODELS` (plus ``timm:<name>``), built by :func:`build_model`.
* datasets: :data:`mixlab.data.DATASETS`, built by :func:`build_dataset`.

Adding a method is one entry in :data:`METHODS`::

    METHODS["mymix"] = MethodSpec(_mixer(MyMix), "Doe et al. 2025, MyMix", {"alpha": 1.0}, "what it does")

Example:
    >>> from mixlab.registry import build_method
    >>> method = build_method("mixup", num_classes=10, alpha=0.4)
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from mixlab.methods.base import Method, MixerMethod, Vanilla
from mixlab.mixers import (CopyPaste, CutMix, DetectionCutMix, DetectionMixup, DetectionResizeMix, FMix, Mixup, Mosaic,
                           RandomChoice, ResizeMix, SaliencyMix)

__all__ = ["MethodSpec", "METHODS", "method_class", "is_self_supervised", "self_supervised_methods", "decouple_methods",
           "build_method", "DENSE_METHODS", "check_dense_method", "build_dense_method", "build_dense_model",
           "build_model", "build_dataset", "check_names", "model_names", "model_arguments", "dataset_names"]


@dataclass(frozen=True)
class MethodSpec:
    """A registered training method.

    Attributes:
        build: ``build(num_classes, label_smoothing, **hparams) -> Method``.
        paper: reference of the paper the defaults come from.
        defaults: the paper's hyper-parameters; each can be overridden by name.
        description: one line for ``--help`` and listings.
        options: further keyword arguments ``build`` accepts (not paper hyper-parameters).
        config: run settings the method brings, as config sections (MAE: its ViT and optimiser
            recipe); ``mixlab train/pretrain/show`` put them under the run's own settings.
        method_class: the :class:`Method` subclass ``build`` returns, as ``"module:Class"``
            (imported on first use), so that what the class declares (``self_supervised``) is
            known without building a method.
    """

    build: Callable[..., Method]
    paper: str
    defaults: dict[str, Any]
    description: str
    options: tuple[str, ...] = field(default=())
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_class: str = "mixlab.methods.base:Method"


# common to every mixlab.mixers.Mixer; `decouple` is DecoupleMix's loss option (MixerMethod's)
_MIXER_OPTIONS = ("p", "pairing", "granularity", "decouple")


def _mixer(cls: type) -> Callable[..., Method]:
    """Constructor of a :class:`MixerMethod` around the stateless mixer ``cls``."""

    def build(num_classes: int, label_smoothing: float = 0.0, decouple: float = 0.0, **hparams: Any) -> Method:
        return MixerMethod(cls(num_classes=num_classes, label_smoothing=label_smoothing, **hparams), decouple=decouple)

    return build


def _vanilla(num_classes: int, label_smoothing: float = 0.0) -> Method:
    return Vanilla(num_classes=num_classes, label_smoothing=label_smoothing)


def _mixup_cutmix(
    num_classes: int, label_smoothing: float = 0.0, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
    cutmix_prob: float = 0.5, decouple: float = 0.0,
) -> Method:
    mixers = [Mixup(num_classes, alpha=mixup_alpha, label_smoothing=label_smoothing),
              CutMix(num_classes, alpha=cutmix_alpha, label_smoothing=label_smoothing)]
    method = MixerMethod(RandomChoice(mixers, probabilities=[1.0 - cutmix_prob, cutmix_prob]), decouple=decouple)
    method.name = "mixup-cutmix"
    return method


def _as_tuples(hparams: dict[str, Any]) -> dict[str, Any]:
    """YAML/CLI lists -> tuples for CropMix's sequence arguments."""
    keys = ("scale", "ratio", "num_crops", "inter_aug", "size")
    return {k: tuple(v) if k in keys and isinstance(v, list) else v for k, v in hparams.items()}


def _cropmix(mix: str, mixer: type | None = None, mixer_alpha: str = "") -> Callable[..., Method]:
    """Constructor of a :class:`~mixlab.methods.cropmix.CropMixMethod` (CropMix in the loader), with
    ``mix`` fixed and optionally a batch ``mixer`` whose α is the hyper-parameter ``mixer_alpha``."""

    def build(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
        from mixlab.methods.cropmix import CropMixMethod

        batch_mixer = None
        if mixer is not None:
            batch_mixer = mixer(num_classes, alpha=hparams.pop(mixer_alpha), label_smoothing=label_smoothing)
        return CropMixMethod(num_classes, label_smoothing, mixer=batch_mixer, mix=mix, **_as_tuples(hparams))

    return build


def _automix(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.methods.automix import AutoMix

    return AutoMix(num_classes, label_smoothing, **hparams)


def _samix(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.methods.samix import SAMix

    return SAMix(num_classes, label_smoothing, **hparams)


def _adautomix(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.methods.adautomix import AdAutoMix

    return AdAutoMix(num_classes, label_smoothing, **hparams)


def _regmixup(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.methods.regmixup import RegMixup

    return RegMixup(num_classes, label_smoothing, **hparams)


def _rrc(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.methods.cropmix import RRCMethod

    return RRCMethod(num_classes, label_smoothing, **_as_tuples(hparams))


def _recursivemix(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.methods.recursivemix import RecursiveMix

    return RecursiveMix(num_classes, label_smoothing, **hparams)


def _manifold_mixup(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.methods.manifold_mixup import ManifoldMixup

    if isinstance(hparams.get("stages"), list):  # YAML gives lists
        hparams["stages"] = tuple(hparams["stages"])
    return ManifoldMixup(num_classes, label_smoothing, **hparams)


def _puzzlemix(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.methods.puzzlemix import PuzzleMix

    hparams = {k: tuple(v) if k in ("block_nums", "pixel_std") and isinstance(v, list) else v
               for k, v in hparams.items()}
    return PuzzleMix(num_classes, label_smoothing, **hparams)


def _transmix(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.methods.transmix import TransMix

    return TransMix(num_classes, label_smoothing, **hparams)


def _mixpro(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.methods.mixpro import MixPro

    return MixPro(num_classes, label_smoothing, **hparams)


def _smmix(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.methods.smmix import SMMix

    return SMMix(num_classes, label_smoothing, **hparams)


def _mocov3(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.ssl.mocov3 import MoCoV3

    return MoCoV3(**hparams)  # self-supervised: no classes, no label smoothing


def _mocov2(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.ssl.mocov2 import MoCoV2

    return MoCoV2(**_as_tuples(hparams))  # self-supervised: no classes, no label smoothing


def _samix_ssl(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.ssl.samix import SAMixSSL

    return SAMixSSL(**_as_tuples(hparams))  # self-supervised: no classes, no label smoothing


def _dino(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.ssl.dino import DINO

    return DINO(**{k: tuple(v) if k.endswith("_scale") and isinstance(v, list) else v for k, v in hparams.items()})


def _mae(num_classes: int, label_smoothing: float = 0.0, **hparams: Any) -> Method:
    from mixlab.ssl.mae import MAE

    return MAE(**{k: tuple(v) if k in ("scale", "cropmix_crops") and isinstance(v, list) else v
                  for k, v in hparams.items()})  # self-supervised: no classes, no label smoothing


# the ViT methods read a transformer's attention: a run without a model of its own trains mixlab's ViT
_VIT_CONFIG = {"model": {"name": "vit_tiny_patch4"}}
_DEIT_SWITCH = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "cutmix_prob": 0.5}  # DeiT's Mixup/CutMix switch
_SDMP_OPTIONS = ("sdmp", "ops", "per_sample", "static_source", "static_intra", "mix_alpha", "image_size")
_SDMP_PAPER = "Ren et al. 2022, A Simple Data Mixing Prior for Improving Self-Supervised Learning (SDMP)"

_DECOUPLE_PAPER = "Liu et al. 2023, Harnessing Hard Mixed Samples with Decoupled Regularizer (DecoupleMix)"
_DECOUPLE = 0.1  # DecoupleMix's η in the reference's default configs (mixup, CIFAR-100 and ImageNet)

_CROPMIX_PAPER = "Han et al. 2022, CropMix: Sampling a Rich Input Distribution via Multi-Scale Cropping"
# the CIFAR setting of §4.1: N = 2 crops of (0.01, 1), Mixup with λ ~ Beta(0.4/N, 0.4/N), channel permutation
_CROPMIX_DEFAULTS = {"scale": (0.01, 1.0), "num_crops": 2, "alpha": 0.4, "inter_aug": ("permute",),
                     "placement": "before"}
_CROPMIX_OPTIONS = ("ratio", "interpolation", "multi_scale", "antialias", "size")

# MAE's recipe (He et al. 2022, Appendix A.1; CropMix Appendix B.3): its ViT, AdamW with β2 = 0.95, weight
# decay 0.05 (the config's warm-up and cosine schedule stay). lr: MAE's base lr 1.5e-4 per 256 images is
# for 200-1600 epochs at batch 4096; short CPU runs need more: 1.5e-3 (10 epochs at batch 64: held-out
# masked-patch loss 0.687 against 0.859 at 3e-4: docs/methods/mae.md)
_MAE_CONFIG = {"model": {"name": "vit_tiny_patch4"},
               "optim": {"name": "adamw", "lr": 1.5e-3, "betas": [0.9, 0.95], "weight_decay": 0.05}}


METHODS: dict[str, MethodSpec] = {
    "vanilla": MethodSpec(_vanilla, "-", {}, "plain cross-entropy on un-mixed images",
                          method_class="mixlab.methods.base:Vanilla"),
    "mixup": MethodSpec(_mixer(Mixup), "Zhang et al. 2018, mixup: Beyond Empirical Risk Minimization",
                        {"alpha": 1.0}, "convex combination of two images and their labels", _MIXER_OPTIONS,
                        method_class="mixlab.methods.base:MixerMethod"),
    "cutmix": MethodSpec(_mixer(CutMix), "Yun et al. 2019, CutMix: Regularization Strategy to Train Strong "
                         "Classifiers with Localizable Features", {"alpha": 1.0},
                         "paste a random box from the partner image; label by area", _MIXER_OPTIONS,
                         method_class="mixlab.methods.base:MixerMethod"),
    "resizemix": MethodSpec(_mixer(ResizeMix), "Qin et al. 2020, ResizeMix: Mixing Data with Preserved Object "
                            "Information and True Labels", {"scale": (0.1, 0.8)},
                            "paste the whole partner image, resized, into a random box", _MIXER_OPTIONS,
                            method_class="mixlab.methods.base:MixerMethod"),
    "fmix": MethodSpec(_mixer(FMix), "Harris et al. 2020, FMix: Enhancing Mixed Sample Data Augmentation",
                       {"alpha": 1.0, "decay_power": 3.0}, "binary masks from low-pass Fourier noise",
                       _MIXER_OPTIONS, method_class="mixlab.methods.base:MixerMethod"),
    "saliencymix": MethodSpec(_mixer(SaliencyMix), "Uddin et al. 2021, SaliencyMix: A Saliency Guided Data "
                              "Augmentation Strategy for Better Regularization", {"alpha": 1.0},
                              "CutMix box centred on the partner's most salient point", _MIXER_OPTIONS,
                              method_class="mixlab.methods.base:MixerMethod"),
    "mixup-cutmix": MethodSpec(_mixup_cutmix, "Touvron et al. 2021, DeiT (training recipe)",
                               {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "cutmix_prob": 0.5},
                               "Mixup or CutMix, chosen per batch", ("decouple",),
                               method_class="mixlab.methods.base:MixerMethod"),
    "mixup+decouple": MethodSpec(_mixer(Mixup), _DECOUPLE_PAPER + "; Zhang et al. 2018, mixup",
                                 {"alpha": 1.0, "decouple": _DECOUPLE},
                                 "Mixup with DecoupleMix's regulariser (decoupled softmax of each mixed class)",
                                 _MIXER_OPTIONS, method_class="mixlab.methods.base:MixerMethod"),
    "cutmix+decouple": MethodSpec(_mixer(CutMix), _DECOUPLE_PAPER + "; Yun et al. 2019, CutMix",
                                  {"alpha": 1.0, "decouple": _DECOUPLE},
                                  "CutMix with DecoupleMix's regulariser (decoupled softmax of each mixed class)",
                                  _MIXER_OPTIONS, method_class="mixlab.methods.base:MixerMethod"),
    "regmixup": MethodSpec(_regmixup, "Pinto et al. 2022, Using Mixup as a Regularizer Can Surprisingly Improve "
                           "Accuracy and Out Distribution Robustness (RegMixup)", {"alpha": 20.0, "eta": 1.0},
                           "clean cross-entropy + eta x the cross-entropy of a Mixup with lambda near 1/2 (large "
                           "alpha), in one pass", ("pairing", "decouple"),
                           method_class="mixlab.methods.regmixup:RegMixup"),
    "cropmix": MethodSpec(_cropmix("mixup"), _CROPMIX_PAPER, _CROPMIX_DEFAULTS,
                          "loader mixes N crops of distinct scales of each image (Mixup); labels unchanged",
                          _CROPMIX_OPTIONS, method_class="mixlab.methods.cropmix:CropMixMethod"),
    "cropmix-cutmix": MethodSpec(_cropmix("cutmix"), _CROPMIX_PAPER, {**_CROPMIX_DEFAULTS, "alpha": 1.0},
                                 "loader mixes N crops of distinct scales of each image (CutMix boxes)",
                                 _CROPMIX_OPTIONS, method_class="mixlab.methods.cropmix:CropMixMethod"),
    "cropmix+mixup": MethodSpec(_cropmix("mixup", Mixup, "mixup_alpha"), _CROPMIX_PAPER + " (recipe R2)",
                                {**_CROPMIX_DEFAULTS, "mixup_alpha": 1.0},
                                "CropMix in the loader, then Mixup on the batch", _CROPMIX_OPTIONS,
                                method_class="mixlab.methods.cropmix:CropMixMethod"),
    "cropmix+cutmix": MethodSpec(_cropmix("mixup", CutMix, "cutmix_alpha"), _CROPMIX_PAPER + " (with CutMix, as R3)",
                                 {**_CROPMIX_DEFAULTS, "cutmix_alpha": 1.0},
                                 "CropMix in the loader, then CutMix on the batch", _CROPMIX_OPTIONS,
                                 method_class="mixlab.methods.cropmix:CropMixMethod"),
    "recursivemix": MethodSpec(_recursivemix, "Yang et al. 2022, RecursiveMix: Mixed Learning with History",
                               {"alpha": 0.5, "omega": 0.1},
                               "paste the resized previous batch into a box; consistency loss on its RoI",
                               ("interpolation", "share_head", "per_sample_boxes", "history", "reset_each_epoch"),
                               method_class="mixlab.methods.recursivemix:RecursiveMix"),
    "automix": MethodSpec(_automix, "Liu et al. 2022, AutoMix: Unveiling the Power of Mixup for Stronger Classifiers",
                          {"alpha": 2.0, "stage": None},
                          "masks from a learned Mix Block on a momentum encoder's stage-l features (stage None: "
                          "the second-to-last, l = 3 on 4-stage ResNets)",
                          ("momentum", "momentum_schedule", "gamma", "epsilon", "lam_margin", "lam_concat", "value",
                           "upsampling", "reduction", "pairing", "clean_loss", "mix_block_lr_scale", "decouple"),
                          method_class="mixlab.methods.automix:AutoMix"),
    "samix": MethodSpec(_samix, "Li et al. 2021, Boosting Discriminative Visual Representation Learning with "
                        "Scenario-Agnostic Mixup (SAMix)", {"alpha": 2.0, "stage": None, "eta": 0.5},
                        "AutoMix's momentum pipeline with SAMix's Mixer (adaptive lambda encoding, non-linear value) "
                        "trained by the eta-balanced mixup loss and an L1 + variance mask loss",
                        ("momentum", "momentum_schedule", "mask_loss", "mask_margin", "lam_margin", "lam_rescale",
                         "upsampling", "reduction", "pairing", "clean_loss", "mix_block_lr_scale", "decouple"),
                        method_class="mixlab.methods.samix:SAMix"),
    "adautomix": MethodSpec(_adautomix, "Qin et al. 2024, Adversarial AutoMixup (AdAutoMix)",
                            {"alpha": 1.0, "num_mix": 3, "beta": 0.3, "mixup_weight": 0.5, "stage": None},
                            "a generator mixes num_mix images per sample (per-pixel softmax weights, labels by pixel "
                            "fraction), trained adversarially against the momentum classifier every other step",
                            ("momentum", "momentum_schedule", "adv_interval", "similarity", "lam_margin", "lam_concat",
                             "upsampling", "reduction", "pairing", "clean_loss", "mix_block_lr_scale"),
                            method_class="mixlab.methods.adautomix:AdAutoMix"),
    "manifold-mixup": MethodSpec(_manifold_mixup, "Verma et al. 2019, Manifold Mixup: Better Representations by "
                                 "Interpolating Hidden States", {"alpha": 2.0, "stages": (0, 1, 2)},
                                 "Mixup of the hidden states at a stage drawn from `stages` (0 = the input), "
                                 "labels mixed alike", ("pairing", "granularity"),
                                 method_class="mixlab.methods.manifold_mixup:ManifoldMixup"),
    "puzzlemix": MethodSpec(_puzzlemix, "Kim et al. 2020, Puzzle Mix: Exploiting Saliency and Local Statistics for "
                            "Optimal Mixup", {"alpha": 1.0, "block_nums": (2, 4, 8, 16), "n_labels": 3, "beta": 1.2,
                                              "gamma": 0.5, "eta": 0.2, "neigh_size": 4, "t_size": 4, "t_eps": 0.8},
                            "block masks by graph cut on input-gradient saliency, salient blocks moved by optimal "
                            "transport; label by the mask's exact area",
                            ("transport", "clean_weight", "pixel_std", "pairing"),
                            method_class="mixlab.methods.puzzlemix:PuzzleMix"),
    "transmix": MethodSpec(_transmix, "Chen et al. 2022, TransMix: Attend to Mix for Vision Transformers",
                           {**_DEIT_SWITCH, "area_weight": 0.0},
                           "DeiT's Mixup/CutMix switch; a CutMix label re-weighted by the last block's class attention "
                           "on each image's patches (ViTs)", ("query", "mask_downsample"), config=_VIT_CONFIG,
                           method_class="mixlab.methods.transmix:TransMix"),
    "mixpro": MethodSpec(_mixpro, "Zhao et al. 2023, MixPro: Data Augmentation with MaskMix and Progressive Attention "
                         "Labeling for Vision Transformer",
                         {"alpha": 1.0, "mask_patch_size": None, "maskmix_prob": 0.5, **_DEIT_SWITCH, "pal": True},
                         "patch-aligned grid-mask mixing; labels blend attention and area by the model's agreement with "
                         "the mixed label (ViTs), else DeiT's switch",
                         ("factor", "accuracy_momentum", "query"), config=_VIT_CONFIG,
                         method_class="mixlab.methods.mixpro:MixPro"),
    "smmix": MethodSpec(_smmix, "Chen et al. 2023, SMMix: Self-Motivated Image Mixing for Vision Transformers",
                        {"smmix_prob": 0.5, "mixup_alpha": 0.8, "min_side_ratio": 0.25, "max_side_ratio": 0.75},
                        "the partner's most attended window pasted over the least attended one; token-level labels "
                        "and consistency with the un-mixed predictions (ViTs), else Mixup",
                        ("fine_weight", "consistency_weight", "share_head"), config=_VIT_CONFIG,
                        method_class="mixlab.methods.smmix:SMMix"),
    "mocov3": MethodSpec(_mocov3, "Chen et al. 2021, An Empirical Study of Training Self-Supervised Vision "
                         "Transformers (MoCo v3); SDMP: " + _SDMP_PAPER,
                         {"dim": 256, "mlp_dim": 4096, "temperature": 0.2, "momentum": 0.99},
                         "self-supervised: symmetric InfoNCE against a momentum encoder (sdmp: true adds SDMP)",
                         ("proj_layers", "sdmp_version", "loss_form") + _SDMP_OPTIONS,
                         method_class="mixlab.ssl.mocov3:MoCoV3"),
    "mocov2": MethodSpec(_mocov2, "He et al. 2020, Momentum Contrast for Unsupervised Visual Representation "
                         "Learning (MoCo); Chen et al. 2020, Improved Baselines with Momentum Contrastive Learning "
                         "(MoCo v2), with the improved head of Wang et al. 2022 (Asym-Siam); views: "
                         + _CROPMIX_PAPER + " (CropMix, §5) and Asym-Siam (ScaleMix)",
                         {"dim": 128, "hidden_dim": 2048, "queue_size": 4096, "temperature": 0.2, "momentum": 0.999,
                          "views": "standard"},
                         "self-supervised: one-directional InfoNCE against a momentum encoder and a queue of "
                         "negatives (views: cropmix | scalemix mixes the query)",
                         ("scale", "shuffle_bn", "bn_splits", "image_size"), method_class="mixlab.ssl.mocov2:MoCoV2"),
    "samix-ssl": MethodSpec(_samix_ssl, "Li et al. 2021, Boosting Discriminative Visual Representation Learning "
                            "with Scenario-Agnostic Mixup (SAMix), self-supervised (openmixup's MoCoSAMix)",
                            {"dim": 128, "hidden_dim": 2048, "queue_size": 4096, "temperature": 0.2,
                             "momentum": 0.999, "alpha": 2.0, "stage": None},
                            "self-supervised: MoCo v2 plus the mixup InfoNCE of SAMix's mixes of one image's query "
                            "view and another's key view; the Mixer learns through the key encoder",
                            ("eta", "mask_loss", "mask_margin", "mask_adjust", "lam_rescale", "upsampling", "reduction",
                             "mix_block_lr_scale", "scale", "shuffle_bn", "bn_splits", "image_size"),
                            method_class="mixlab.ssl.samix:SAMixSSL"),
    "dino": MethodSpec(_dino, "Caron et al. 2021, Emerging Properties in Self-Supervised Vision Transformers "
                       "(DINO); SDMP: " + _SDMP_PAPER,
                       {"out_dim": 65536, "num_local": 6, "teacher_temp": 0.07, "momentum": 0.996},
                       "self-supervised: self-distillation with a momentum teacher and multi-crop (sdmp: true "
                       "adds SDMP)",
                       ("hidden_dim", "bottleneck_dim", "head_layers", "use_bn", "norm_last_layer", "student_temp",
                        "warmup_teacher_temp",
                        "teacher_temp_warmup", "center_momentum", "freeze_last_layer", "local_size",
                        "global_scale", "local_scale", "num_mixed_local") + _SDMP_OPTIONS,
                       method_class="mixlab.ssl.dino:DINO"),
    "mae": MethodSpec(_mae, "He et al. 2022, Masked Autoencoders Are Scalable Vision Learners (MAE); CropMix input: "
                      + _CROPMIX_PAPER + " (§6, Appendix B.3)",
                      {"mask_ratio": 0.75, "norm_pix_loss": True, "input": "rrc", "scale": (0.2, 1.0)},
                      "self-supervised: reconstruct the pixels of 75 % removed patches of a ViT's input "
                      "(input: cropmix mixes crops of distinct scales first)",
                      ("decoder_dim", "decoder_depth", "decoder_heads", "decoder_mlp_ratio", "cropmix_mix",
                       "cropmix_crops", "cropmix_alpha", "interpolation", "image_size"),
                      config=_MAE_CONFIG, method_class="mixlab.ssl.mae:MAE"),
    "rrc": MethodSpec(_rrc, "Szegedy et al. 2015, Going Deeper with Convolutions (RandomResizedCrop; the "
                      "CropMix paper's baseline)", {"scale": (0.08, 1.0)},
                      "RandomResizedCrop + flip in the loader (CropMix's baseline)",
                      ("ratio", "interpolation", "antialias", "size"), method_class="mixlab.methods.cropmix:RRCMethod"),
}


#: the methods of the dense tasks (``data.task``): name -> (mixer class or None for vanilla, its
#: defaults). Segmentation: the mixers that move label maps with the pixels (``mixlab.mixers.base``);
#: detection: the mixers of ``mixlab.mixers.detection``, Mosaic and Copy-Paste. Each trains with
#: :mod:`mixlab.methods.dense`'s step; ``method.params`` go to the mixer's constructor.
DENSE_METHODS: dict[str, dict[str, tuple[type | None, dict[str, Any]]]] = {
    "segmentation": {"vanilla": (None, {}), "mixup": (Mixup, {"alpha": 1.0}), "cutmix": (CutMix, {"alpha": 1.0}),
                     "resizemix": (ResizeMix, {"scale": (0.1, 0.8)}),
                     "fmix": (FMix, {"alpha": 1.0, "decay_power": 3.0}), "saliencymix": (SaliencyMix, {"alpha": 1.0})},
    "detection": {"vanilla": (None, {}), "mosaic": (Mosaic, {}), "copypaste": (CopyPaste, {}),
                  "mixup": (DetectionMixup, {}), "cutmix": (DetectionCutMix, {}),
                  "resizemix": (DetectionResizeMix, {})},
}


def check_dense_method(task: str, name: str, params: dict | None = None) -> None:
    """Check that method ``name`` of :data:`DENSE_METHODS` trains ``task`` and takes ``params``.

    Raises:
        ValueError: an unknown task, a method that does not train it (the ones that do are listed),
            or a hyper-parameter its mixer does not take (the valid ones are listed).
    """
    if task not in DENSE_METHODS:
        raise ValueError(f"task must be 'classification', 'segmentation' or 'detection', got {task!r}")
    valid = DENSE_METHODS[task]
    if name not in valid:
        why = (f"{name!r} trains classification only" if name in METHODS else f"unknown method {name!r}")
        close = difflib.get_close_matches(name, list(valid), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"method {name!r} does not train task {task!r} ({why}{hint}); "
                         f"methods for {task}: {', '.join(valid)}")
    mixer, _ = valid[name]
    if mixer is None and params:
        raise ValueError(f"method 'vanilla' of task {task!r} takes no hyper-parameters, got {sorted(params)}")
    if mixer is not None:
        accepted = [p for p in inspect.signature(mixer.__init__).parameters if p not in ("self", "num_classes")]
        if "kwargs" in accepted:  # the detection mixers forward the template's options
            accepted = [p for p in accepted if p != "kwargs"] + [
                p for p in inspect.signature(mixer.__mro__[1].__init__).parameters if p not in ("self", "kwargs")]
        set_by_run = ("num_classes", "generator", "ignore_index", "label_smoothing")  # (label smoothing: the loss's)
        accepted = [k for k in dict.fromkeys(accepted) if k not in set_by_run]
        for key in params or {}:
            if key not in accepted:
                raise ValueError(f"method {name!r} of task {task!r} ({mixer.__name__}) has no hyper-parameter "
                                 f"{key!r}; valid: {', '.join(accepted)}")


def build_dense_method(task: str, name: str, num_classes: int, label_smoothing: float = 0.0,
                       ignore_index: int = 255, **overrides: Any) -> Method:
    """The :mod:`mixlab.methods.dense` step of ``task`` with the mixer ``name`` of
    :data:`DENSE_METHODS` (its defaults updated by ``overrides``).

    Raises:
        ValueError: a method that does not train ``task`` (the ones that do are listed), or a
            hyper-parameter its mixer does not take.
    """
    from mixlab.methods.dense import DetectionStep, SegmentationStep

    check_dense_method(task, name, overrides)
    cls, defaults = DENSE_METHODS[task][name]
    hparams = {k: tuple(v) if isinstance(v, list) else v for k, v in {**defaults, **overrides}.items()}
    if task == "segmentation":
        mixer = cls(num_classes, ignore_index=ignore_index, **hparams) if cls is not None else None
        return SegmentationStep(mixer, num_classes, label_smoothing, name, ignore_index)
    return DetectionStep(cls(**hparams) if cls is not None else None, num_classes, label_smoothing, name)


def build_dense_model(task: str, name: str, num_classes: int, *, image_size: int, mean=(0.5,) * 3, std=(0.25,) * 3,
                      **kwargs: Any):
    """:func:`mixlab.models.dense.build_dense_model` with the name checked: one of torchvision's
    dense models (:data:`~mixlab.models.dense.TORCHVISION_DENSE`) or a classification model (the
    backbone), whose own keyword arguments are checked as :func:`build_model`'s.

    Raises:
        ValueError: an unknown name or keyword argument.
    """
    from mixlab.models.dense import TORCHVISION_DENSE, build_dense_model as build

    own = ("levels", "fpn_channels", "head_convs")
    if not any(name in names for names in TORCHVISION_DENSE.values()):  # (the other task's: said by the builder)
        if not name.startswith("timm:") and name not in model_names():
            raise _unknown("model", name, list(TORCHVISION_DENSE.get(task, {})) + model_names() + ["timm:<name>"])
        check_names(model=name, model_kwargs={k: v for k, v in kwargs.items() if k not in own})
    return build(task, name, num_classes, image_size=image_size, mean=mean, std=std, **kwargs)


def _unknown(kind: str, name: str, valid: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown {kind} {name!r}{hint}; valid {kind}s: {', '.join(valid)}")


def method_class(name: str) -> type[Method]:
    """The :class:`Method` subclass the registered method ``name`` builds (``MethodSpec.method_class``).

    Raises:
        ValueError: an unknown method name.
    """
    if name not in METHODS:
        raise _unknown("method", name, list(METHODS))
    module, _, cls = METHODS[name].method_class.partition(":")
    return getattr(importlib.import_module(module), cls)


def is_self_supervised(method: str | Method) -> bool:
    """Whether ``method`` (a registered name, or a built method) learns without labels, so that a
    run of it has no trained classifier (``mixlab probe`` scores it, not ``mixlab eval``): what its
    class declares, :attr:`Method.self_supervised` (a name only :data:`DENSE_METHODS` has: False).
    The one place this is decided.

    Raises:
        ValueError: an unknown method name.
    """
    if isinstance(method, str) and method not in METHODS and any(method in d for d in DENSE_METHODS.values()):
        return False  # a dense task's method (mosaic, copypaste): supervised
    cls = type(method) if isinstance(method, Method) else method_class(method)
    return bool(cls.self_supervised)


def decouple_methods() -> tuple[str, ...]:
    """The methods that take DecoupleMix's loss option ``decouple=η`` (``method.params.decouple``),
    in registry order: those whose mixed targets are pairs with a label weight."""
    return tuple(name for name, spec in METHODS.items() if "decouple" in spec.defaults or "decouple" in spec.options)


def self_supervised_methods() -> tuple[str, ...]:
    """The names of the self-supervised methods (``mixlab pretrain --framework``), in registry order."""
    return tuple(name for name in METHODS if is_self_supervised(name))


def check_names(method: str | None = None, method_params: dict | None = None, model: str | None = None,
                dataset: str | None = None, model_kwargs: dict | None = None) -> None:
    """Check names (and a method's hyper-parameter names, a model's keyword arguments) without
    building anything.

    Raises:
        ValueError: an unknown name, with the valid ones and the nearest match; a keyword argument
            that the model's constructor does not take, with the ones it takes.
    """
    if method is not None:
        if method not in METHODS:
            raise _unknown("method", method, list(METHODS))
        spec = METHODS[method]
        valid = list(spec.defaults) + list(spec.options)
        for key in method_params or {}:
            if key == "decouple" and key not in valid:
                raise ValueError(f"method {method!r} does not take decouple (DecoupleMix's loss option); the methods "
                                 f"that take it: {', '.join(decouple_methods())}")
            if key not in valid:
                raise ValueError(f"method {method!r} has no hyper-parameter {key!r}; "
                                 f"valid: {', '.join(valid) or 'none'}")
    if model is not None and not model.startswith("timm:") and model not in model_names():
        raise _unknown("model", model, model_names() + ["timm:<name>"])
    if dataset is not None and dataset not in dataset_names():
        raise _unknown("dataset", dataset, dataset_names())
    if model is not None and model_kwargs:
        accepted, complete = model_arguments(model)
        unknown = [k for k in model_kwargs if k not in accepted]
        if unknown and complete:
            raise _bad_model_kwargs(model, unknown[0], accepted, complete)


def build_method(name: str, num_classes: int, label_smoothing: float = 0.0, **overrides: Any) -> Method:
    """The method ``name`` with its paper defaults, updated by ``overrides``.

    Raises:
        ValueError: unknown method name or hyper-parameter (the valid ones are listed).
    """
    check_names(method=name, method_params=overrides)
    spec = METHODS[name]
    hparams = {**spec.defaults, **overrides}
    if "scale" in hparams and isinstance(hparams["scale"], list):  # YAML gives lists
        hparams["scale"] = tuple(hparams["scale"])
    return spec.build(num_classes, label_smoothing, **hparams)


def model_names() -> list[str]:
    from mixlab.models import MODELS

    return list(MODELS)


def dataset_names() -> list[str]:
    from mixlab.data import DATASETS

    return list(DATASETS)


def model_arguments(name: str) -> tuple[list[str], bool]:
    """``(names, complete)``: the keyword arguments model ``name`` takes (``model.kwargs``), read from
    its constructor's signature: the factory's parameters with a default, and where it forwards
    ``**kwargs`` to the class its return annotation names, that class's. ``complete`` is False when
    more are forwarded further (a timm model, mixlab's ViT to timm's ``VisionTransformer``).
    ``num_classes`` is set by the run and not listed.
    """
    from mixlab.models import MODELS

    if name not in MODELS:  # timm:<name>: whatever timm.create_model and the model class take
        return ["pretrained"], False
    names: list[str] = []
    fn: Any = MODELS[name]
    while fn is not None:
        params = inspect.signature(fn).parameters.values()
        names += [p.name for p in params if p.default is not inspect.Parameter.empty
                  and p.name not in ("num_classes", "self") and p.name not in names]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return names, True
        try:
            target = typing.get_type_hints(fn).get("return")
        except (NameError, TypeError):
            target = None
        fn = target.__init__ if isinstance(target, type) and fn is not getattr(target, "__init__", None) else None
    return names, False


def _bad_model_kwargs(model: str, key: str, accepted: list[str], complete: bool, detail: str = "") -> ValueError:
    close = difflib.get_close_matches(key, accepted, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    takes = ", ".join(accepted) or "none"
    if not complete:
        takes += ", and those of the model class it builds" + (f" ({detail})" if detail else "")
    return ValueError(f"model {model!r} takes no argument {key!r} (model.kwargs.{key}){hint}; it takes {takes}; "
                      f"set them with --set model.kwargs.NAME=VALUE")


def build_model(name: str, num_classes: int, **kwargs: Any):
    """``mixlab.models.create_model`` with a clear error for unknown names (``timm:<name>`` passes)
    and for keyword arguments the model does not take.

    Raises:
        ValueError: an unknown name, or a keyword argument of ``kwargs`` the model does not take
            (with the ones it takes).
    """
    from mixlab.models import create_model

    check_names(model=name, model_kwargs=kwargs)
    try:
        return create_model(name, num_classes=num_classes, **kwargs)
    except TypeError as e:  # forwarded further than the signatures tell (timm)
        match = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if match is None:
            raise
        raise _bad_model_kwargs(name, match[1], *model_arguments(name), detail=str(e)) from None


def build_dataset(name: str, split: str, root: str | None = None, task: str = "classification", **kwargs: Any):
    """``mixlab.data.build_dataset`` with a clear error for unknown names (``task`` as there;
    the dense tasks' names are checked by it, against their own registry)."""
    from mixlab import data

    if task == "classification":
        check_names(dataset=name)
    return data.build_dataset(name, split, root=root, task=task, **kwargs)
