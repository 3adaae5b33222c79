"""The attention map of a ViT's last block, recorded alongside the fused attention.

TransMix, MixPro and SMMix read the last transformer block's attention ``softmax(q kᵀ / √d)``.
timm computes attention with ``F.scaled_dot_product_attention``, which returns no map, so the map
is recomputed from the block's own ``q`` and ``k``: a forward hook on the last block's ``qkv``
projection receives its output (the (B, N, 3·heads·d) projections the fused kernel is about to
use), applies the module's ``q_norm`` / ``k_norm`` and forms the map without gradient, in float32
(also under autocast). No projection is computed twice and the block's output is untouched. The
hook exists only inside :class:`AttentionRecorder`'s ``with`` block: outside it the model runs
exactly as before (no hook installed, nothing to check).

Which row of the map a method reads (``query``):

* ``"cls"``: the class token's attention to the patch tokens, averaged over heads
  (``attn[:, :, 0, P:].mean(1)``, P prefix tokens): TransMix's and MixPro's official code.
* ``"mean"``: the attention each patch token *receives*, averaged over the patch-token queries and
  the heads (``attn[:, :, P:, P:].mean((1, 2))``): SMMix's official code, for every model. It is also
  the definition used for models without a class token (mixlab's ``vit_tiny_patch4`` pools by
  global average: its logits read every token alike, so the mean over queries is the natural
  stand-in for the class token's row; TransMix's and MixPro's papers treat class-token models only).
* ``"auto"``: ``"cls"`` when the model classifies from a class token, else ``"mean"``.

Both rows are normalised by the softmax over *all* keys (prefix tokens included) before the prefix
columns are dropped, as the official code does; the label weights divide by their sum anyway.

Supported models: timm's ``VisionTransformer`` family (ViT, DeiT, DeiT-distilled: any prefix
tokens) through ``create_model("timm:<name>")`` or directly, and mixlab's ``ViT``
(``vit_tiny_patch4``); in general any model whose last self-attention is a timm
``timm.layers.Attention`` and which has a ``patch_embed`` with a ``patch_size``. Swin's window
attention has no class token and no global map: it is refused with a :class:`TypeError`, as is any
model without such an attention module.

Example:
    >>> model = create_model("vit_tiny_patch4", 10)
    >>> with AttentionRecorder(model, query="mean") as rec:
    ...     logits = model(images)                 # one ordinary forward pass
    >>> rec.map.shape                              # (B, 64): one weight per 4x4 patch of a 32x32 image
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import torch
from torch import Tensor, nn

__all__ = ["QUERIES", "AttentionLayout", "AttentionRecorder", "attention_layout", "patch_grid", "patch_tokens"]

#: the rows of the attention map a recorder can return (see the module docstring)
QUERIES = ("auto", "cls", "mean")

_SUPPORTED = ("timm VisionTransformer models (ViT, DeiT, DeiT-distilled, via create_model('timm:<name>')) and "
              "mixlab's vit_tiny_patch4")


@dataclass(frozen=True)
class AttentionLayout:
    """Where a ViT's last attention is and how its tokens are laid out.

    Attributes:
        attention: the last block's timm ``Attention`` module.
        num_prefix_tokens: tokens before the patch tokens (class, distillation, register tokens).
        class_token: whether the model classifies from a class token (token 0).
        patch_size: (p_h, p_w) of the patch embedding.
    """

    attention: nn.Module
    num_prefix_tokens: int
    class_token: bool
    patch_size: tuple[int, int]


def _attention_class() -> type:
    from timm.layers import Attention

    return Attention


def attention_layout(model: nn.Module, caller: str = "this method") -> AttentionLayout:
    """The :class:`AttentionLayout` of ``model``.

    Raises:
        TypeError: the model has no timm ``Attention`` module (a CNN), uses window attention (Swin),
            or has no ``patch_embed`` with a ``patch_size``; the message says what is needed.
    """
    attention_cls = _attention_class()
    attentions = [m for m in model.modules() if isinstance(m, attention_cls)]
    windows = [type(m).__name__ for m in model.modules() if "WindowAttention" in type(m).__name__]
    if windows:
        raise TypeError(f"{caller} needs the global attention map of the model's last transformer block; "
                        f"{type(model).__name__} uses window attention ({windows[0]}: Swin-style windows have no class "
                        f"token and no map over the whole image), which is not supported. Supported: {_SUPPORTED}")
    if not attentions:
        raise TypeError(f"{caller} needs the attention map of the model's last transformer block: the model must "
                        f"contain a timm Attention module (timm.layers.Attention, with qkv, num_heads, head_dim, scale, "
                        f"q_norm and k_norm) and a patch_embed with a patch_size; {type(model).__name__} has no "
                        f"such attention. Supported: {_SUPPORTED}")
    root = next((m for m in model.modules() if isinstance(getattr(m, "patch_embed", None), nn.Module)), None)
    patch = getattr(getattr(root, "patch_embed", None), "patch_size", None)
    if root is None or patch is None:
        raise TypeError(f"{caller} needs the model's patch size to place the attention map on the image: "
                        f"{type(model).__name__} has no patch_embed with a patch_size. Supported: {_SUPPORTED}")
    patch = (int(patch), int(patch)) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
    prefix = int(getattr(root, "num_prefix_tokens", 0))
    class_token = getattr(root, "cls_token", None) is not None and getattr(root, "global_pool", "token") == "token"
    return AttentionLayout(attentions[-1], prefix, class_token, patch)


def patch_grid(layout: AttentionLayout, height: int, width: int) -> tuple[int, int]:
    """The (h, w) token grid of an (H, W) input.

    Raises:
        ValueError: H or W is not a multiple of the patch size (the attention map would not tile the image).
    """
    ph, pw = layout.patch_size
    if height % ph or width % pw:
        raise ValueError(f"the images ({height}x{width}) must be a multiple of the model's patch size {ph}x{pw} so "
                         f"that the attention map tiles them")
    return height // ph, width // pw


def patch_tokens(layout: AttentionLayout, features: Tensor) -> Tensor:
    """The patch tokens (B, N_p, C) of ``model.forward_features(x)``: a timm ViT's (B, N, C) tokens
    without the prefix tokens, or mixlab's ViT's (B, C, h, w) map flattened in raster order."""
    if features.ndim == 4:
        return features.flatten(2).transpose(1, 2)
    if features.ndim == 3:
        return features[:, layout.num_prefix_tokens:]
    raise ValueError(f"forward_features must return (B, N, C) tokens or a (B, C, h, w) map, got shape "
                     f"{tuple(features.shape)}")


class AttentionRecorder:
    """Context manager: record the last block's attention map during the forward passes in its block.

    Args:
        model: a supported ViT (module docstring).
        query: ``"auto"``, ``"cls"`` or ``"mean"``: which row of the map (module docstring).
        heads: ``"mean"`` (average the heads) or ``"keep"``.
        layout: the model's :class:`AttentionLayout` when already known (methods find it once, in setup).

    After a forward pass, :attr:`map` is the (B, N_p) map (``heads="keep"``: (B, heads, N_p)), float32,
    without gradient; the patch tokens in raster order.

    Raises:
        TypeError: the model has no supported attention (see :func:`attention_layout`).
        ValueError: ``query="cls"`` for a model without a class token, or an unknown ``query``/``heads``.
    """

    def __init__(self, model: nn.Module, query: str = "auto", heads: str = "mean",
                 layout: AttentionLayout | None = None) -> None:
        if query not in QUERIES:
            raise ValueError(f"query must be one of {list(QUERIES)}, got {query!r}")
        if heads not in ("mean", "keep"):
            raise ValueError(f"heads must be 'mean' or 'keep', got {heads!r}")
        self.layout = layout if layout is not None else attention_layout(model)
        if query == "cls" and not self.layout.class_token:
            raise ValueError(f"query='cls' needs a model that classifies from a class token; {type(model).__name__} "
                             f"has none (use query='mean' or 'auto')")
        self.query = ("cls" if self.layout.class_token else "mean") if query == "auto" else query
        self.heads = heads
        self._handle = None
        self._map: Tensor | None = None

    @property
    def map(self) -> Tensor:
        """The map of the last forward pass inside the ``with`` block."""
        if self._map is None:
            raise RuntimeError("no attention recorded: run the model inside the `with AttentionRecorder(...)` block")
        return self._map

    def __enter__(self) -> Self:
        self._map = None
        self._handle = self.layout.attention.qkv.register_forward_hook(self._record)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @torch.no_grad()
    def _record(self, module: nn.Module, inputs: tuple, qkv: Tensor) -> None:
        attn = self.layout.attention
        b, n, _ = qkv.shape
        q, k, _ = qkv.detach().reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
        q, k = attn.q_norm(q).float(), attn.k_norm(k).float()
        p = self.layout.num_prefix_tokens
        rows = q[:, :, :1] if self.query == "cls" else q[:, :, p:]  # (B, h, 1 or N_p, d)
        with torch.autocast(qkv.device.type, enabled=False):  # the map in float32, also under AMP
            a = ((rows * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)[..., p:]  # (B, h, rows, N_p)
        a = a.mean(dim=2)  # (B, h, N_p): the class token's row, or the mean over patch queries
        self._map = a.mean(dim=1) if self.heads == "mean" else a
