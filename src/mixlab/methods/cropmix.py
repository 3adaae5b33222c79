"""CropMix as a training method: a per-image DataLoader transform, then a vanilla (or mixer) step.

Han et al. 2022, "CropMix: Sampling a Rich Input Distribution via Multi-Scale Cropping". The
method changes what the loader produces (:meth:`CropMixMethod.train_transform`, replacing the
default crop + flip with ``CropMix`` + ``RandomHorizontalFlip``, the CIFAR recipe of §4.1); the
step is plain cross-entropy, or a batch mixer's step when ``mixer`` is given (the ImageNet recipes
R2/R3 of Appendix B keep Mixup/CutMix on the batch on top of CropMix).

:class:`RRCMethod` is the RandomResizedCrop baseline of the paper's tables, the same way round.

Example:
    >>> from mixlab.methods.cropmix import CropMixMethod
    >>> method = CropMixMethod(num_classes=10, num_crops=2, scale=(0.01, 1.0))
    >>> transform = method.train_transform(None)   # CropMix (input size kept) + flip, uint8 in/out
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from mixlab.core.losses import SoftTargetCrossEntropy
from mixlab.core.result import MixResult
from mixlab.core.targets import soft_targets
from mixlab.methods.base import Method, StepOutput

__all__ = ["CropMixMethod", "RRCMethod", "infer_crop_size"]


def infer_crop_size(default: Callable | None) -> tuple[int, int] | None:
    """The output size of the trainer's default train transform (its ``RandomCrop`` or
    ``RandomResizedCrop``, possibly inside a ``Compose``), or ``None`` when it has none."""
    from torchvision.transforms import v2

    stack = [default]
    while stack:
        t = stack.pop(0)
        if isinstance(t, v2.Compose):
            stack.extend(t.transforms)
        elif isinstance(t, (v2.RandomResizedCrop, v2.RandomCrop, v2.CenterCrop)):
            return tuple(t.size)  # type: ignore[return-value]
    return None


class CropMixMethod(Method):
    """CropMix in the loader; cross-entropy (or ``mixer``'s soft-target loss) in the step.

    Args:
        num_classes: K.
        label_smoothing: ε of the cross-entropy without a mixer (a mixer smooths its own targets).
        mixer: optional batch mixer ``mixer(images, labels) -> MixResult`` (``mixlab.CutMix``, ...)
            applied to the CropMix'ed batch.
        **cropmix_args: :class:`mixlab.transforms.CropMix`'s arguments. ``size`` defaults to the
            crop size of the trainer's default transform, else the input size.

    Raises:
        TypeError, ValueError: bad CropMix arguments, at construction.
    """

    name = "cropmix"

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, mixer: Callable[..., MixResult] | None = None,
                 **cropmix_args: Any) -> None:
        super().__init__(num_classes=num_classes, label_smoothing=label_smoothing)
        from mixlab.transforms import CropMix, CropMixBatch

        self.cropmix_args = dict(cropmix_args)
        self.size = self.cropmix_args.pop("size", None)
        self.cropmix = CropMix(self.size, **self.cropmix_args)  # validates the arguments now
        batch_args = {k: v for k, v in self.cropmix_args.items() if k != "antialias"}
        self.preview = CropMixBatch(**batch_args)  # output size = the previewed images' size
        self.mixer = mixer
        self.loss_fn = SoftTargetCrossEntropy()
        if mixer is not None:
            self.name = f"{type(self).name}+{getattr(mixer, 'name', type(mixer).__name__.lower())}"

    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        super().setup(model, generator)
        self.preview.generator = generator
        if self.mixer is not None and hasattr(self.mixer, "generator") and generator is not None:
            self.mixer.generator = generator

    def _crop(self, size: tuple[int, int] | None) -> Callable:
        """The per-image crop transform for output ``size``."""
        from mixlab.transforms import CropMix

        return self.cropmix if size == self.cropmix.size else CropMix(size, **self.cropmix_args)

    def train_transform(self, default: Callable | None, image_size: int | None = None) -> Callable:
        """``v2.Compose([CropMix(size, ...), v2.RandomHorizontalFlip()])``: uint8 CHW in and out
        (the trainer normalises on the device); it replaces ``default`` (crop + flip)."""
        from torchvision.transforms import v2

        size = self.cropmix.size if self.size is not None else infer_crop_size(default)
        return v2.Compose([self._crop(size), v2.RandomHorizontalFlip()])

    def _identity(self, images: Tensor, labels: Tensor) -> MixResult:
        b = images.shape[0]
        targets = soft_targets(labels, self.num_classes)
        ones = torch.ones(b, device=images.device)
        return MixResult(images, targets, ones, torch.arange(b, device=images.device), targets)

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        images, labels = batch
        if self.mixer is None:
            out = super().training_step(model, batch, progress)
            # the loader's CropMix images are the method's mixed inputs (samples.png); labels unchanged
            out.mixed = self._identity(images, labels)
            return out
        mixed = self.mixer(images, labels)
        logits = model(mixed.images)
        return StepOutput(loss=self.loss_fn(logits, mixed.targets), logits=logits, mixed=mixed)

    @torch.no_grad()
    def mix_preview(self, images: Tensor, labels: Tensor) -> MixResult:
        """The batched CropMix of ``images`` (normalised float, as the trainer's batches), drawn
        from the method's generator; labels unchanged (λ = 1, index = identity), then ``mixer``.

        Channels are permuted after normalisation here (before it in training), a small colour
        shift; colour jitter assumes [0, 1] images, so with ``"colorjitter"`` the batch is mapped
        to [0, 1] by its min and max for the preview and back.
        """
        x = images
        if "colorjitter" in self.preview.inter_aug and images.is_floating_point():
            lo, hi = images.min(), images.max()
            x = self.preview((images - lo) / (hi - lo).clamp_min(1e-12)) * (hi - lo) + lo
        else:
            x = self.preview(images)
        if self.mixer is not None:
            return self.mixer(x, labels)
        return self._identity(x, labels)

    def extra_repr(self) -> str:
        return f"mixer={self.mixer!r}" if self.mixer is not None else ""


class RRCMethod(CropMixMethod):
    """The RandomResizedCrop baseline: ``v2.RandomResizedCrop(size, scale, ratio)`` + flip in the
    loader, cross-entropy in the step (``mixlab.transforms.rrc``).

    Args:
        num_classes, label_smoothing, mixer: as :class:`CropMixMethod`.
        scale: crop-scale range, default (0.08, 1.0) (the paper's ImageNet RRC; §4.1 also runs
            (0.01, 1), (0.25, 1) and (0.75, 1) on CIFAR).
        ratio, interpolation, antialias, size: as ``v2.RandomResizedCrop`` (``size`` inferred as
            in :class:`CropMixMethod`).
    """

    name = "rrc"

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, mixer: Callable[..., MixResult] | None = None,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
                 interpolation: str = "bilinear", antialias: bool = True, size: Any = None) -> None:
        super().__init__(num_classes, label_smoothing, mixer, size=size, scale=scale, ratio=ratio, num_crops=1,
                         interpolation=interpolation, antialias=antialias, inter_aug=())
        self.rrc_args = dict(scale=scale, ratio=ratio, interpolation=interpolation, antialias=antialias)

    def _crop(self, size: tuple[int, int] | None) -> Callable:
        from mixlab.transforms import rrc

        if size is None:  # no size known: keep each input's size (CropMix with N = 1 is RRC)
            return self.cropmix
        return rrc(size, **self.rrc_args)
