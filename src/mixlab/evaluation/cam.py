"""Class activation maps of a trained classifier, and a figure comparing runs.

Two kinds of map, chosen per model by :func:`class_activation_maps` (``method="auto"``):

* **CAM** (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization", §2):
  ``M_c(x, y) = Σ_k w_k^c f_k(x, y)``, the classifier weights of class c applied to the final
  feature map ``f = model.forward_features(images)`` (no bias, no ReLU), so that
  ``mean_{x,y} M_c + b_c`` is the logit of class c. Used when the head *is* global average
  pooling + one linear layer: ``model.get_classifier()`` is an ``nn.Linear`` over the feature
  map's channels and ``model.forward_head(f)`` equals it applied to ``f.mean((2, 3))`` (checked
  numerically on the batch). That holds for mixlab's CIFAR ResNets, PreAct-ResNet, WRN and its
  ViT (whose GAP + linear head reads the token grid after the final LayerNorm, so CAM is exact
  there too), and for timm CNNs with an average-pool head (ResNet, EfficientNet, RegNet, ...).
* **Grad-CAM** (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization", Eq. 1-2): ``α_k^c = mean_{i,j} ∂y^c/∂A^k_ij`` and
  ``L^c = ReLU(Σ_k α_k^c A^k)``, with y^c the logit. ``A`` is the final feature map for every other
  model with a spatial ``forward_features`` (ConvNeXt's normalised head, MobileNetV3's conv head,
  Swin's NHWC map), and, for timm Vision Transformers (``blocks`` + ``patch_embed``), the patch
  tokens *entering the last block* (prefix tokens dropped), laid out on the patch-embedding grid.
  The last block's input rather than its output, because with a class-token head the output
  patch tokens do not reach the logits (zero gradient); this is ``pytorch-grad-cam``'s
  ``blocks[-1].norm1`` target before that LayerNorm. For a GAP + linear head, Grad-CAM on the
  final map is ``ReLU(CAM) / (h·w)``.

Maps are computed for a batch at once on the model's device, in eval mode (the previous mode is
restored), and leave no ``.grad`` on any parameter (gradients are taken with
``torch.autograd.grad`` w.r.t. the activations only). By default they are upsampled to the image
size with bilinear interpolation (``align_corners=False``); ``upsample=None`` keeps the feature
resolution (what :class:`mixlab.evaluation.wsol.MaxBoxAccV2` expects: it resizes bicubically as
the WSOL benchmark does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CAMOutput", "CAM_METHODS", "class_activation_maps", "plot_cams"]

CAM_METHODS = ("auto", "cam", "gradcam")
_UPSAMPLE = ("bilinear", "bicubic", None)


@dataclass
class CAMOutput:
    """Class activation maps of a batch.

    Attributes:
        cams: (B, k, H, W) float32 maps (image size, or feature size with ``upsample=None``).
        classes: (B, k) int64 class of each map (top-k predictions by default, best first).
        probs: (B, k) float32 softmax probability the model gives each of those classes.
        method: ``"cam"`` or ``"gradcam"``.
        layer: what the maps were computed on: ``"features"`` (the final feature map) or
            ``"tokens"`` (the patch tokens entering a ViT's last block).
    """

    cams: Tensor
    classes: Tensor
    probs: Tensor
    method: str
    layer: str


def _check_args(images: Any, topk: Any, method: Any, upsample: Any) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) float tensor (normalised as the model was trained), got {got}")
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be an int >= 1, got {topk!r}")
    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {CAM_METHODS}, got {method!r}")
    if upsample not in _UPSAMPLE:
        raise ValueError(f"upsample must be one of {_UPSAMPLE}, got {upsample!r}")


def _select_classes(logits: Tensor, classes: Tensor | None, topk: int) -> Tensor:
    """(B, k) classes: given ones (as (B,) or (B, k)), or the top-k of ``logits``."""
    b, num_classes = logits.shape
    if classes is None:
        if topk > num_classes:
            raise ValueError(f"topk must be <= the number of classes ({num_classes}), got {topk}")
        return logits.topk(topk, dim=1).indices
    if not isinstance(classes, Tensor) or classes.dtype.is_floating_point or classes.dtype == torch.bool:
        raise TypeError(f"classes must be an integer tensor (B,) or (B, k), got {type(classes).__name__}"
                        f"{' of dtype ' + str(classes.dtype) if isinstance(classes, Tensor) else ''}")
    out = classes.to(logits.device, torch.long)
    out = out[:, None] if out.dim() == 1 else out
    if out.dim() != 2 or out.shape[0] != b:
        raise ValueError(f"classes must have shape ({b},) or ({b}, k), got {tuple(classes.shape)}")
    if out.numel() and (int(out.min()) < 0 or int(out.max()) >= num_classes):
        raise ValueError(f"classes must lie in [0, {num_classes}), got range [{int(out.min())}, {int(out.max())}]")
    return out


def _inner(model: nn.Module) -> nn.Module:
    """The timm model inside a :class:`mixlab.models.TimmModel`, else ``model``."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) else model


def _is_vit(model: nn.Module) -> bool:
    inner = _inner(model)
    blocks = getattr(inner, "blocks", None)
    return (isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0
            and isinstance(getattr(inner, "patch_embed", None), nn.Module) and hasattr(inner, "num_prefix_tokens"))


def _gap_linear(model: nn.Module, features: Tensor, logits: Tensor) -> nn.Linear | None:
    """The classifier if ``logits = model.forward_head(features)`` is exactly global average
    pooling + this linear layer (checked on the batch), else None."""
    classifier = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
    if features.dim() != 4 or not isinstance(classifier, nn.Linear) or classifier.in_features != features.shape[1]:
        return None
    direct = classifier(features.mean(dim=(2, 3)))
    if direct.shape != logits.shape:
        return None
    tol = 1e-3 if features.dtype in (torch.float16, torch.bfloat16) else 1e-5
    return classifier if bool((logits - direct).abs().max() <= tol * (direct.abs().max() + 1)) else None


def _nchw(model: nn.Module, features: Tensor) -> Tensor:
    """A (B, C, h, w) view of a spatial feature map (timm's NHWC models, Swin, are permuted)."""
    fmt = getattr(_inner(model), "output_fmt", "NCHW")
    return features.permute(0, 3, 1, 2) if str(fmt).upper().endswith("NHWC") else features


def _gradcam(leaf: Tensor, logits: Tensor, classes: Tensor, to_map: Callable[[Tensor], Tensor]) -> Tensor:
    """Grad-CAM (Eq. 1-2) of ``classes`` (B, k): ``leaf`` holds the activations the logits were
    computed from; ``to_map`` lays it (and its gradient) out as (B, C, h, w)."""
    activations = to_map(leaf.detach())
    maps = []
    for j in range(classes.shape[1]):
        score = logits.gather(1, classes[:, j:j + 1]).sum()  # images are independent in eval mode
        (grad,) = torch.autograd.grad(score, leaf, retain_graph=j + 1 < classes.shape[1])
        alpha = to_map(grad).mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1), Eq. 1
        maps.append(torch.relu((alpha * activations).sum(dim=1)))  # (B, h, w), Eq. 2
    return torch.stack(maps, dim=1)


def _vit_tokens_gradcam(model: nn.Module, images: Tensor, classes: Tensor | None, topk: int
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """Grad-CAM on the patch tokens entering a timm ViT's last block: (maps, logits, classes)."""
    inner = _inner(model)
    captured: list[Tensor] = []

    def enter_last_block(module: nn.Module, args: tuple) -> tuple:
        tokens = args[0].detach().requires_grad_(True)  # a leaf: gradients stop here
        captured.append(tokens)
        return (tokens, *args[1:])

    handle = inner.blocks[-1].register_forward_pre_hook(enter_last_block)
    try:
        with torch.enable_grad():
            logits = model(images)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise TypeError(f"{type(inner).__name__}: expected the last block to run once per forward, ran {len(captured)}")
    tokens = captured[0]  # (B, prefix + h*w, C)
    embed = inner.patch_embed
    size = tuple(images.shape[-2:])
    gh, gw = embed.dynamic_feat_size(size) if hasattr(embed, "dynamic_feat_size") else embed.grid_size
    prefix = int(inner.num_prefix_tokens)
    if tokens.dim() != 3 or tokens.shape[1] - prefix != gh * gw:
        raise TypeError(f"{type(inner).__name__}: tokens entering the last block have shape {tuple(tokens.shape)}, "
                        f"expected (B, {prefix} + {gh}*{gw}, C) for a {size} image")
    chosen = _select_classes(logits.detach(), classes, topk)

    def patch_grid(t: Tensor) -> Tensor:  # (B, prefix + h*w, C) -> (B, C, h, w)
        return t[:, prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], gh, gw)

    return _gradcam(tokens, logits, chosen, patch_grid), logits.detach(), chosen


@torch.no_grad()
def _features_maps(model: nn.Module, images: Tensor, classes: Tensor | None, topk: int, method: str
                   ) -> tuple[Tensor, Tensor, Tensor, str]:
    """CAM or Grad-CAM on the final feature map: (maps, logits, classes, method used)."""
    features = model.forward_features(images)
    if features.dim() != 4:
        raise TypeError(f"{type(model).__name__}.forward_features returned shape {tuple(features.shape)}; CAM and "
                        "Grad-CAM need a spatial map (B, C, h, w) (or a timm ViT with blocks and patch_embed)")
    classifier = None
    if method in ("auto", "cam"):
        logits = model.forward_head(features)
        classifier = _gap_linear(model, features, logits)
    if method == "cam" and classifier is None:
        raise ValueError(f"method='cam' needs a head that is global average pooling + one nn.Linear "
                         f"(get_classifier()); {type(model).__name__}'s is not: use method='gradcam' or 'auto'")
    if classifier is not None:
        chosen = _select_classes(logits, classes, topk)
        weights = classifier.weight[chosen]  # (B, k, C)
        maps = torch.einsum("bkc,bchw->bkhw", weights.to(features.dtype), features)
        return maps, logits, chosen, "cam"
    leaf = features.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model.forward_head(leaf)
        chosen = _select_classes(logits.detach(), classes, topk)
        maps = _gradcam(leaf, logits, chosen, lambda t: _nchw(model, t))
    return maps, logits.detach(), chosen, "gradcam"


def class_activation_maps(
    model: nn.Module,
    images: Tensor,
    classes: Tensor | None = None,
    topk: int = 1,
    upsample: str | None = "bilinear",
    method: str = "auto",
) -> CAMOutput:
    """Class activation maps of ``images`` for their top-k predicted classes (or given classes).

    See the module docstring for which map each model gets (CAM or Grad-CAM, and on what).

    Args:
        model: a classifier with ``forward_features`` / ``forward_head`` (every
            :mod:`mixlab.models` model, ``timm:<name>`` included).
        images: (B, C, H, W) float batch, normalised as in training; moved to the model's device.
        classes: (B,) or (B, k) int classes to explain (e.g. the labels, for WSOL); default the
            ``topk`` most probable classes, best first.
        topk: number of classes per image when ``classes`` is None.
        upsample: ``"bilinear"`` (default) or ``"bicubic"`` resize to (H, W) with
            ``align_corners=False``; ``None`` keeps the feature-map resolution.
        method: ``"auto"`` (CAM when the head is GAP + linear, else Grad-CAM), ``"cam"`` or
            ``"gradcam"`` (forced).

    Returns:
        :class:`CAMOutput` with maps (B, k, ·, ·), classes and probabilities.

    Raises:
        ValueError: bad ``images``/``topk``/``upsample``/``method``, classes out of range, or
            ``method="cam"`` for a head that is not GAP + linear.
        TypeError: ``classes`` not an integer tensor, or a model without ``forward_features`` /
            ``forward_head`` or without a spatial feature map.

    Example:
        >>> out = class_activation_maps(model, images, topk=3)
        >>> out.cams.shape, out.classes.shape   # (B, 3, H, W), (B, 3)
    """
    _check_args(images, topk, method, upsample)
    for attr in ("forward_features", "forward_head"):
        if not callable(getattr(model, attr, None)):
            raise TypeError(f"class_activation_maps needs model.{attr} (mixlab.models and timm models have it); "
                            f"{type(model).__name__} has none")
    param = next(iter(model.parameters()), None)
    if param is not None:
        images = images.to(param.device, param.dtype)
    if _is_vit(model) and method == "cam":
        raise ValueError(f"method='cam' needs a global-average-pool + linear head on a spatial map; "
                         f"{type(_inner(model)).__name__} is a ViT (Grad-CAM on its tokens): use 'gradcam' or 'auto'")
    was_training = model.training
    model.eval()
    try:
        if _is_vit(model):
            maps, logits, chosen = _vit_tokens_gradcam(model, images, classes, topk)
            used, layer = "gradcam", "tokens"
        else:
            maps, logits, chosen, used = _features_maps(model, images, classes, topk, method)
            layer = "features"
    finally:
        model.train(was_training)
    maps = maps.float()
    if upsample is not None:
        maps = F.interpolate(maps, size=tuple(images.shape[-2:]), mode=upsample, align_corners=False)
    probs = logits.float().softmax(dim=1).gather(1, chosen)
    return CAMOutput(maps, chosen, probs, used, layer)


def plot_cams(
    images: Tensor,
    runs: Sequence[tuple[str, CAMOutput]],
    class_names: Sequence[str],
    labels: Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    path: str | Path | None = None,
    alpha: float = 0.5,
):
    """A figure comparing runs' CAMs: one row per image; the image in colour, then for every run
    its k maps side by side, each overlaid on the image in grey (jet colour map, min-max scaled per
    map) and titled with the class name and the run's probability (green when it is the true
    class); each run's name heads its block of columns.

    Args:
        images: (N, C, H, W) the images the maps were computed on: in [0, 1], or normalised with
            ``mean``/``std`` (undone for display); ``uint8`` is accepted too.
        runs: ``(name, CAMOutput)`` pairs, each with N maps at the image size.
        class_names: names indexed by class.
        labels: optional (N,) true classes, written over the input image.
        mean, std: the normalisation of ``images``, if any.
        path: where to save the PNG (parent folders are created); the figure is returned anyway.
        alpha: opacity of the maps.

    Returns:
        The matplotlib ``Figure`` (Agg canvas; matplotlib is imported here only).

    Raises:
        ValueError: no runs, or a run whose maps do not match the images.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not runs:
        raise ValueError("runs must hold at least one (name, CAMOutput) pair, got none")
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    n, _, h, w = images.shape
    for name, out in runs:
        if out.cams.dim() != 4 or out.cams.shape[0] != n or tuple(out.cams.shape[-2:]) != (h, w):
            raise ValueError(f"run {name!r}: cams must be ({n}, k, {h}, {w}) to match the images, got "
                             f"{tuple(out.cams.shape)} (compute them with upsample='bilinear')")
    shown = images.detach().float().cpu()
    if images.dtype == torch.uint8:
        shown = shown / 255
    elif mean is not None and std is not None:
        shown = shown * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    shown = shown.clamp(0, 1)
    grey = shown.mean(dim=1).numpy()  # (N, H, W) base under the maps
    colour = shown.permute(0, 2, 3, 1).numpy()
    colour = colour[..., 0] if colour.shape[-1] == 1 else colour
    widths = [out.cams.shape[1] for _, out in runs]
    columns = 1 + sum(widths)
    cell = 1.8
    fig = Figure(figsize=(cell * columns, cell * n + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, columns, squeeze=False)
    for i in range(n):
        truth = None if labels is None else int(labels[i])
        axes[i, 0].imshow(colour[i], cmap="gray" if colour.ndim == 3 else None, vmin=0, vmax=1)
        if truth is not None:
            axes[i, 0].set_title(f"true: {class_names[truth]}", fontsize=9)
        col = 1
        for _, out in runs:
            maps = out.cams[i].detach().float().cpu()
            lo = maps.amin(dim=(1, 2), keepdim=True)
            maps = (maps - lo) / (maps.amax(dim=(1, 2), keepdim=True) - lo).clamp_min(1e-12)
            for j in range(maps.shape[0]):
                ax = axes[i, col]
                ax.imshow(grey[i], cmap="gray", vmin=0, vmax=1)
                ax.imshow(maps[j].numpy(), cmap="jet", alpha=alpha, vmin=0, vmax=1)
                cls = int(out.classes[i, j])
                ax.set_title(f"{class_names[cls]} {float(out.probs[i, j]):.2f}", fontsize=9,
                             color="green" if cls == truth else "black")
                col += 1
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (cell * n + 0.6)))
    col = 1
    for (name, _), k in zip(runs, widths):  # run names centred over their columns
        left, right = axes[0, col].get_position(), axes[0, col + k - 1].get_position()
        fig.text((left.x0 + right.x1) / 2, 1 - 0.1 / (cell * n + 0.6), name, ha="center", va="top",
                 fontsize=11, fontweight="bold")
        col += k
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    return fig
