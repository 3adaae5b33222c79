"""MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"), with CropMix
(Han et al. 2022, §6 and Appendix B.3) as an option for the pre-training input.

75 % of the patches of each image are removed; the ViT's own patch embedding, blocks and norm run
on the visible tokens; a light decoder predicts every patch; the loss is the MSE of per-patch
normalised pixels over the removed patches. The input is RandomResizedCrop + flip or CropMix (a
Mixup of N ∈ {2, 3, 4} crops, or CutMix of 2).

The defaults and their source and the deviations from the official code: docs/methods/mae.md.

Example:
    >>> from mixlab.models import vit_tiny_patch4
    >>> model, method = vit_tiny_patch4(), MAE()
    >>> method.setup(model, torch.Generator().manual_seed(0))
    >>> images = torch.randn(8, 3, 32, 32)                  # normalised, as the trainer's batches
    >>> loss = method.training_step(model, ([images], None), progress=0.0).loss
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from mixlab.core.checks import IncompatibleModelError, check_bool, check_choice, check_range
from mixlab.core.random import rand
from mixlab.core.result import MixResult
from mixlab.methods.base import ImageRows, StepOutput
from mixlab.ssl.base import SelfSupervised, positive_int

__all__ = ["MAE", "MAEDecoder", "ViTEncoder", "vit_encoder", "patchify", "unpatchify", "random_masking",
           "patch_targets", "masked_mse", "sincos_2d", "INPUTS", "CROPMIX_MIXES"]

INPUTS = ("rrc", "cropmix")
CROPMIX_MIXES = ("mixup", "cutmix")
#: N of the two official CropMix + MAE commands: Mixup over N ∈ {2, 3, 4}, CutMix with N = 2
DEFAULT_CROPS = {"mixup": (2, 3, 4), "cutmix": 2}
NORM_PIX_EPS = 1e-6


# ------------------------------------------------------------------------------ pure helpers
def patchify(images: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, L, p²C): patch j = row-major position on the (H/p, W/p) grid, its
    pixels ordered (row, column, channel) as the authors' code."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"MAE needs image sides divisible by the patch size {patch}, got {h}x{w}")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: Tensor, patch: int, grid: tuple[int, int]) -> Tensor:
    """Inverse of :func:`patchify`: (B, L, p²C) on a ``grid`` (h, w) -> (B, C, h·p, w·p)."""
    b, _, d = patches.shape
    gh, gw = grid
    c = d // (patch * patch)
    x = patches.reshape(b, gh, gw, patch, patch, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, gh * patch, gw * patch)


def random_masking(batch: int, length: int, mask_ratio: float, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-image random masking by ``argsort`` of uniform noise.

    Returns:
        ``ids_keep`` (B, K) int64, the kept patches in the random order; ``ids_restore`` (B, L)
        int64, the position of each patch in that order; ``mask`` (B, L) float, 1 for removed
        patches. K = ``int(L · (1 − mask_ratio))``, so exactly L − K patches of every image are removed.

    Raises:
        ValueError: the ratio leaves no visible or no removed patch.
    """
    keep = int(length * (1.0 - mask_ratio))
    if not 0 < keep < length:
        raise ValueError(f"mask_ratio {mask_ratio} keeps {keep} of {length} patches; it must keep at least one "
                         f"and remove at least one")
    noise = rand((batch, length), generator, device)  # (B, L) in [0, 1)
    ids_shuffle = noise.argsort(dim=1)  # ascending: small noise is kept, large removed
    ids_restore = ids_shuffle.argsort(dim=1)  # patch j sits at position ids_restore[j] of the order
    mask = (ids_restore >= keep).float()  # removed = not among the first K of the order
    return ids_shuffle[:, :keep], ids_restore, mask


def patch_targets(images: Tensor, patch: int, norm_pix: bool = True) -> Tensor:
    """The reconstruction targets (B, L, p²C) in float32: pixels per patch, standardised per patch
    with its own mean and (unbiased) variance when ``norm_pix`` (MAE §3, "normalized pixels")."""
    target = patchify(images.float(), patch)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + NORM_PIX_EPS).sqrt()
    return target


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """``Σ m_bj · mean_k (pred − target)²_bjk / Σ m_bj``: the mean squared error per patch,
    averaged over the removed patches only (mask 1) — MAE's loss; visible patches do not count."""
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, L)
    return (per_patch * mask).sum() / mask.sum()


def sincos_2d(grid: tuple[int, int], dim: int, device: torch.device | str | None = None) -> Tensor:
    """Fixed 2-D sin-cos position embedding (1, h·w, dim), row-major over the grid: channels
    [0, dim/2) encode the column, [dim/2, dim) the row, each half ``[sin(pos·ω), cos(pos·ω)]`` with
    ω_k = 10000^(−k/(dim/4)), k < dim/4 (the authors' ``get_2d_sincos_pos_embed``)."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    gh, gw = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64, device=device) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64, device=device),
                                torch.arange(gw, dtype=torch.float64, device=device), indexing="ij")

    def axis(pos: Tensor) -> Tensor:  # (h·w,) -> (h·w, dim/2)
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([axis(cols), axis(rows)], dim=1).float().unsqueeze(0)


# ------------------------------------------------------------------------------ the encoder: the user's ViT
@dataclass
class ViTEncoder:
    """How MAE runs a ViT: ``embed(images)`` -> (B, P + L, C) tokens with position embeddings,
    the P prefix tokens (class, registers) first; ``layers``: the blocks, then the final norm."""

    embed: Callable[[Tensor], Tensor]
    layers: list[nn.Module]
    prefix: int
    patch: int
    width: int
    channels: int


def vit_encoder(model: nn.Module) -> ViTEncoder:
    """The MAE view of ``model``: a mixlab :class:`~mixlab.models.vit.ViT` or a timm
    ``VisionTransformer`` (bare, or held as ``.model`` by ``create_model("timm:...")``).

    Raises:
        IncompatibleModelError (a ``TypeError``): any other model, or a ViT with non-square patches.
    """
    from timm.models.vision_transformer import VisionTransformer

    from mixlab.models.vit import ViT

    if isinstance(model, ViT):
        def embed(images: Tensor) -> Tensor:  # the stem: patch + position embedding (+ pre-norm), as a map
            return model.forward_stem(images).flatten(2).transpose(1, 2)  # (B, L, C)

        layers = [layer for stage in model.stages for layer in stage]  # blocks, then the final LayerNorm
        patch_embed, prefix, width = model.patch_embed, 0, model.stage_channels[-1]
    else:
        vit = getattr(model, "model", model)
        if not isinstance(vit, VisionTransformer):
            raise IncompatibleModelError(f"MAE needs a Vision Transformer (mixlab's vit_tiny_patch4, or a timm "
                                         f"VisionTransformer such as timm:vit_tiny_patch16_224), got "
                                         f"{type(model).__name__}; use the model vit_tiny_patch4")

        def embed(images: Tensor) -> Tensor:  # timm's own order: patches, prefix tokens + position embedding
            return vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))  # (B, P + L, C)

        layers = [*vit.blocks, vit.norm]
        patch_embed, prefix, width = vit.patch_embed, vit.num_prefix_tokens, vit.embed_dim
    ph, pw = patch_embed.patch_size
    if ph != pw:
        raise IncompatibleModelError(f"MAE needs square patches, got {ph}x{pw}")
    return ViTEncoder(embed, layers, prefix, ph, width, patch_embed.proj.in_channels)


# ------------------------------------------------------------------------------ the decoder: MAE's own
class MAEDecoder(nn.Module):
    """MAE's light decoder: encoded visible tokens + mask tokens -> pixels of every patch.

    Args:
        in_dim: the encoder's width C.
        patch: patch side p; channels: image channels (the prediction has p²·channels values).
        dim, depth, num_heads, mlp_ratio: the decoder transformer (timm ``Block``s, LayerNorm ε 1e-6).
    """

    def __init__(self, in_dim: int, patch: int, channels: int, dim: int = 128, depth: int = 2, num_heads: int = 4,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch * patch * channels)
        self.dim = dim
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE's init: Xavier-uniform linear weights, zero biases, unit LayerNorms, mask token N(0, 0.02²)."""
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, latent: Tensor, ids_restore: Tensor, prefix: int, grid: tuple[int, int]) -> Tensor:
        """(B, P + K, C) encoded tokens (prefix first, then the kept patches in the masking order)
        -> (B, L, p²C) predictions for every patch, in grid order."""
        x = self.embed(latent)  # (B, P + K, D)
        b, length = ids_restore.shape
        visible = x[:, prefix:]
        tokens = torch.cat([visible, self.mask_token.expand(b, length - visible.shape[1], -1).to(x.dtype)], dim=1)
        tokens = tokens.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, self.dim))  # unshuffle: (B, L, D)
        tokens = tokens + sincos_2d(grid, self.dim, x.device).to(x.dtype)
        x = self.norm(self.blocks(torch.cat([x[:, :prefix], tokens], dim=1)))  # prefix tokens: no position
        return self.pred(x[:, prefix:])  # (B, L, p²C)


# ------------------------------------------------------------------------------ the method
class MAE(SelfSupervised):
    """MAE pre-training of a ViT's encoder, optionally on CropMix'ed inputs.

    Args:
        mask_ratio: fraction of patches removed per image, in (0, 1) (0.75).
        norm_pix_loss: reconstruct per-patch normalised pixels (True, MAE's better target).
        decoder_dim, decoder_depth, decoder_heads, decoder_mlp_ratio: the decoder (128, 2, 4, 4.0;
            MAE's ViT-B setting is 512, 8, 16, 4.0). ``decoder_dim`` divisible by 4 and by the heads.
        input: ``"rrc"`` (MAE's RandomResizedCrop + flip, default) or ``"cropmix"``.
        scale: crop-scale range of RRC and of CropMix, (0.2, 1.0) (Appendix B.3).
        cropmix_mix: ``"mixup"`` (default) or ``"cutmix"``.
        cropmix_crops: N, an int or a set to draw from per image; ``None``: {2, 3, 4} for Mixup,
            2 for CutMix (the official commands).
        cropmix_alpha: CropMix's α (``None``: 0.4 for Mixup, λ ~ Beta(0.4/N, 0.4/N); 1.0 for
            CutMix, λ ~ U(0, 1)).
        interpolation: resize of every crop, ``"bicubic"`` (MAE), ``"bilinear"`` or ``"nearest"``.
        image_size: side of the training crops (default: the training images').

    Raises:
        ValueError, TypeError: an argument out of range, named; ``setup`` with a model that is not a
            ViT (:class:`~mixlab.core.checks.IncompatibleModelError`, a ``TypeError``).
    """

    name = "mae"

    def __init__(self, mask_ratio: float = 0.75, norm_pix_loss: bool = True, decoder_dim: int = 128,
                 decoder_depth: int = 2, decoder_heads: int = 4, decoder_mlp_ratio: float = 4.0, input: str = "rrc",
                 scale: tuple[float, float] = (0.2, 1.0), cropmix_mix: str = "mixup",
                 cropmix_crops: int | Sequence[int] | None = None, cropmix_alpha: float | None = None,
                 interpolation: str = "bicubic", image_size: int | None = None) -> None:
        super().__init__(image_size)
        if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be a float in (0, 1), got {mask_ratio!r}")
        self.mask_ratio = float(mask_ratio)
        self.norm_pix_loss = check_bool(norm_pix_loss, "norm_pix_loss")
        self.decoder_dim = positive_int(decoder_dim, "decoder_dim", 4)
        self.decoder_depth = positive_int(decoder_depth, "decoder_depth")
        self.decoder_heads = positive_int(decoder_heads, "decoder_heads")
        if self.decoder_dim % 4 or self.decoder_dim % self.decoder_heads:
            raise ValueError(f"decoder_dim must be divisible by 4 (sin-cos position embedding) and by decoder_heads "
                             f"({self.decoder_heads}), got {self.decoder_dim}")
        if isinstance(decoder_mlp_ratio, bool) or not isinstance(decoder_mlp_ratio, (int, float)) \
                or not decoder_mlp_ratio > 0:
            raise ValueError(f"decoder_mlp_ratio must be a number > 0, got {decoder_mlp_ratio!r}")
        self.decoder_mlp_ratio = float(decoder_mlp_ratio)
        self.input = check_choice(input, "input", INPUTS)
        self.scale = check_range(scale, "scale")
        if self.scale[0] <= 0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        self.cropmix_mix = check_choice(cropmix_mix, "cropmix_mix", CROPMIX_MIXES)
        self.cropmix_crops = DEFAULT_CROPS[self.cropmix_mix] if cropmix_crops is None else cropmix_crops
        self.cropmix_alpha = cropmix_alpha
        self.interpolation = interpolation
        from mixlab.transforms import CropMixBatch

        try:  # validates the crop arguments now; also the preview of `mixlab show` (no flip: it shows the mixing)
            self.preview = CropMixBatch(**self._cropmix_args())
        except (TypeError, ValueError) as e:
            raise type(e)(f"MAE's crops (cropmix_crops is CropMix's num_crops, cropmix_alpha its alpha): {e}") from None
        self.decoder: MAEDecoder | None = None  # sized by the encoder in setup()
        self.patch_size = 0  # the encoder's, set in setup()
        self.label_classes = 0  # the model's classes (setup): the width of the pictures' one-hot labels

    def _cropmix_args(self) -> dict[str, Any]:
        return dict(scale=self.scale, num_crops=self.cropmix_crops, mix=self.cropmix_mix, alpha=self.cropmix_alpha,
                    interpolation=self.interpolation, inter_aug=())

    # ------------------------------------------------------------------ setup
    def views(self, image_size: int) -> Callable:
        """One view per image: RRC or CropMix of ``scale`` at ``image_size``, then a horizontal flip."""
        from torchvision.transforms import v2

        from mixlab.transforms import CropMix, OneView, rrc

        crop = (rrc(image_size, scale=self.scale, interpolation=self.interpolation) if self.input == "rrc"
                else CropMix(image_size, **self._cropmix_args()))
        return OneView(v2.Compose([crop, v2.RandomHorizontalFlip()]))

    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        """Check that ``model`` is a ViT and build the decoder for its width and patch, on its device."""
        super().setup(model, generator)
        self.preview.generator = generator
        self.label_classes = int(getattr(model, "num_classes", 0) or 0)
        encoder = vit_encoder(model)
        self.patch_size = encoder.patch
        if self.decoder is None:
            device = next(model.parameters()).device
            self.decoder = MAEDecoder(encoder.width, encoder.patch, encoder.channels, self.decoder_dim,
                                      self.decoder_depth, self.decoder_heads, self.decoder_mlp_ratio).to(device)

    def _ready(self) -> MAEDecoder:
        if self.decoder is None:
            raise RuntimeError("MAE.setup(model) must be called before training (the trainer does it)")
        return self.decoder

    def param_groups(self, base_lr: float) -> list[dict]:
        """The decoder, with the encoder's lr; weight decay on its matrices (and mask token) only."""
        params = list(self._ready().parameters())
        return [{"params": [p for p in params if p.ndim >= 2]},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]

    # ------------------------------------------------------------------ the loss
    def forward_mae(self, model: nn.Module, images: Tensor, generator: torch.Generator | None = None
                    ) -> tuple[Tensor, Tensor]:
        """Mask, encode the visible patches, decode every patch.

        Returns:
            ``pred`` (B, L, p²C) and ``mask`` (B, L), 1 for removed patches.
        """
        decoder = self._ready()
        encoder = vit_encoder(model)
        p = encoder.patch
        if images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(f"MAE needs image sides divisible by the patch size {p}, got "
                             f"{images.shape[-2]}x{images.shape[-1]}")
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        tokens = encoder.embed(images)  # (B, P + L, C)
        prefix, patches = tokens[:, :encoder.prefix], tokens[:, encoder.prefix:]
        b, length, width = patches.shape
        ids_keep, ids_restore, mask = random_masking(b, length, self.mask_ratio, generator, images.device)
        kept = patches.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, width))  # (B, K, C)
        x = torch.cat([prefix, kept], dim=1)
        for layer in encoder.layers:  # blocks, then the final norm
            x = layer(x)
        return decoder(x, ids_restore, encoder.prefix, grid), mask

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        views = self.unpack(batch)
        if len(views) != 1:
            raise ValueError(f"MAE takes one view per image, got {len(views)}")
        images = views[0]
        pred, mask = self.forward_mae(model, images, self.generator)
        loss = masked_mse(pred, patch_targets(images, self.patch_size, self.norm_pix_loss), mask)
        mixed = None
        if self.input == "cropmix" and isinstance(batch, (tuple, list)) and isinstance(batch[1], Tensor):
            mixed = self._as_inputs(images, batch[1])  # the loader's CropMix images, for samples.png
        return StepOutput(loss=loss, mixed=mixed)

    def _as_inputs(self, images: Tensor, labels: Tensor) -> MixResult:
        """``images`` as an un-mixed batch with one-hot labels (λ = 1, index = identity), as wide as
        the model's classes (read from the labels, a wait for the device, only without a model)."""
        b = images.shape[0]
        source = nn.functional.one_hot(labels.long(), self.label_classes or int(labels.max()) + 1).float()
        return MixResult(images, source, torch.ones(b, device=images.device), torch.arange(b, device=images.device),
                         source)

    # ------------------------------------------------------------------ pictures
    @torch.no_grad()
    def mix_preview(self, images: Tensor, labels: Tensor) -> MixResult | None:
        """The batched CropMix of ``images`` with this method's settings (``mixlab show``); ``None``
        for the RRC input (nothing is mixed)."""
        if self.input != "cropmix":
            return None
        return self._as_inputs(self.preview(images), labels)

    @torch.no_grad()
    def reconstruct(self, model: nn.Module, images: Tensor, generator: torch.Generator | None = None
                    ) -> tuple[Tensor, Tensor]:
        """``(masked, reconstruction)`` images, (B, C, H, W) like ``images``: the visible patches
        on 0 (the dataset's mean colour once de-normalised), and the visible patches pasted into
        the predicted ones (norm-pix predictions mapped back with each true patch's mean and std)."""
        pred, mask = self.forward_mae(model, images, generator)
        p = self.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        pixels = patchify(images.float(), p)  # (B, L, p²C)
        if self.norm_pix_loss:
            mean, var = pixels.mean(dim=-1, keepdim=True), pixels.var(dim=-1, keepdim=True)
            pred = pred.float() * (var + NORM_PIX_EPS).sqrt() + mean
        removed = mask.unsqueeze(-1)  # (B, L, 1)
        masked = unpatchify(pixels * (1 - removed), p, grid)
        reconstruction = unpatchify(pixels * (1 - removed) + pred.float() * removed, p, grid)
        return masked.to(images.dtype), reconstruction.to(images.dtype)

    def epoch_figures(self, model: nn.Module, images: Tensor) -> dict[str, ImageRows]:
        """``reconstructions.png``: original / masked / reconstruction of the fixed images, under
        one fixed mask (a generator seeded 0: the same patches removed every epoch)."""
        masked, reconstruction = self.reconstruct(model, images, torch.Generator().manual_seed(0))
        percent = f"{100 * self.mask_ratio:g} %"
        return {"reconstructions.png": ImageRows(
            [("original", images), (f"masked ({percent})", masked), ("reconstruction", reconstruction)],
            title=f"MAE reconstructions ({self.input} input; visible patches pasted into the prediction)")}

    def extra_repr(self) -> str:
        cropmix = (f", cropmix_mix={self.cropmix_mix!r}, cropmix_crops={self.cropmix_crops}"
                   if self.input == "cropmix" else "")
        return (f"mask_ratio={self.mask_ratio}, norm_pix_loss={self.norm_pix_loss}, decoder={self.decoder_depth}x"
                f"{self.decoder_dim} ({self.decoder_heads} heads), input={self.input!r}, scale={self.scale}{cropmix}")
