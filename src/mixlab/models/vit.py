"""A small Vision Transformer for CIFAR-size images, built from timm's ``VisionTransformer``.

Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words". ``vit_tiny_patch4``: 32x32 input,
4x4 patches (an 8x8 token grid), embed dim 192, 8 blocks, 3 heads, no class token, global
average pooling. The timm modules (patch embedding, blocks, norms, head, and their init) are
reused; the wrapper only re-arranges them to satisfy the staged protocol
(:mod:`mixlab.models.staged`). How it differs from ``timm.VisionTransformer``:

- every intermediate value is a spatial map (B, C, H/p, W/p), not a token sequence: each stage
  flattens the map to tokens, runs its blocks and folds the tokens back (views, no copies);
- ``forward_stem`` = patch embedding + position embedding (+ dropout, + pre-norm if any);
- ``stages`` = the blocks split into ``num_stages`` (4) groups, as equal as possible; the final
  LayerNorm is applied per token at the end of the last stage, so ``forward_features`` returns
  normalised tokens as a (B, C, H/p, W/p) map (timm's ``global_pool='avg'`` default instead puts
  the norm after pooling, ``fc_norm``; here ``fc_norm=False``);
- any H, W works (H != W too): the position embedding, learnt for ``img_size``, is resampled
  (bicubic) to the input's token grid, and inputs are zero-padded to a multiple of the patch size;
- patch dropout (``patch_drop_rate``), class / register tokens and other pooling modes are not
  available, since they break the spatial map.
"""

from __future__ import annotations

from torch import Tensor, nn

from .staged import StagedNet, check_num_classes

__all__ = ["TokenStage", "ViT", "vit_tiny_patch4"]

# VisionTransformer arguments fixed by the wrapper (the staged protocol needs a spatial map).
_FIXED = dict(
    class_token=False,
    reg_tokens=0,
    global_pool="avg",
    fc_norm=False,
    final_norm=True,
    dynamic_img_size=True,
    dynamic_img_pad=True,
    patch_drop_rate=0.0,
)


class TokenStage(nn.Sequential):
    """Transformer blocks on a spatial map: (B, C, h, w) -> tokens (B, h*w, C) -> blocks -> map."""

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        tokens = super().forward(tokens)
        return tokens.transpose(1, 2).reshape(b, c, h, w)  # (B, C, h, w), channels-last strides


class ViT(StagedNet):
    """Staged wrapper around a timm ``VisionTransformer`` without class token.

    Args:
        num_classes: K.
        img_size: training resolution (the position embedding is learnt for it).
        patch_size: patch size p; the feature maps are (H/p, W/p).
        embed_dim, depth, num_heads, mlp_ratio: transformer size.
        num_stages: number of groups the ``depth`` blocks are split into.
        drop_rate: dropout before the classifier (timm's ``drop_rate``).
        **kwargs: more ``VisionTransformer`` arguments (``drop_path_rate``, ``attn_drop_rate``,
            ``pos_drop_rate``, ``qkv_bias``, ``in_chans``, ...), except those in ``_FIXED``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        img_size: int | tuple[int, int] = 32,
        patch_size: int = 4,
        embed_dim: int = 192,
        depth: int = 8,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        num_stages: int = 4,
        drop_rate: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        clash = sorted(set(kwargs) & set(_FIXED))
        if clash:
            raise ValueError(f"ViT: {clash} are fixed by the staged wrapper ({_FIXED})")
        if not 1 <= num_stages <= depth:
            raise ValueError(f"ViT: need 1 <= num_stages <= depth, got {num_stages} and {depth}")
        from timm.models.vision_transformer import VisionTransformer  # timm on first use (see models.timm_models)

        vit = VisionTransformer(
            img_size=img_size, patch_size=patch_size, num_classes=num_classes, embed_dim=embed_dim,
            depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, drop_rate=drop_rate,
            **_FIXED, **kwargs,
        )
        self.patch_embed = vit.patch_embed  # (B, 3, H, W) -> (B, H/p, W/p, C)
        self.pos_embed = vit.pos_embed  # (1, N, C), learnt on the img_size grid
        self.pos_drop = vit.pos_drop
        self.norm_pre = vit.norm_pre
        blocks = list(vit.blocks)
        sizes = [depth // num_stages + (k < depth % num_stages) for k in range(num_stages)]
        stages, start = [], 0
        for size in sizes:
            stages.append(TokenStage(*blocks[start:start + size]))
            start += size
        stages[-1].append(vit.norm)  # final LayerNorm, per token, folded into the last stage
        self.stages = nn.ModuleList(stages)
        self.stage_channels = [embed_dim] * num_stages
        self._build_head(num_classes, drop_rate)
        self.fc = vit.head  # keep timm's head init

    def no_weight_decay(self) -> set[str]:
        """Parameters to exclude from weight decay (timm's optimizer factory convention)."""
        return {"pos_embed"}

    def forward_stem(self, x: Tensor) -> Tensor:
        from timm.layers import resample_abs_pos_embed

        x = self.patch_embed(x)  # (B, h, w, C)
        _, h, w, c = x.shape
        pos = resample_abs_pos_embed(
            self.pos_embed, new_size=[h, w], old_size=list(self.patch_embed.grid_size), num_prefix_tokens=0
        )  # (1, h*w, C); returned as is when (h, w) is the training grid
        x = self.norm_pre(self.pos_drop(x + pos.view(1, h, w, c)))
        return x.permute(0, 3, 1, 2)  # (B, C, h, w)


def vit_tiny_patch4(num_classes: int = 10, **kwargs) -> ViT:
    """ViT-Tiny/4 for 32x32 images: dim 192, 8 blocks in 4 stages, 3 heads, GAP (about 3.6M params)."""
    return ViT(num_classes=num_classes, **kwargs)
