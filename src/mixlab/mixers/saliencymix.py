"""SaliencyMix (Uddin et al., "SaliencyMix: A Saliency Guided Data Augmentation Strategy for
Better Regularization", ICLR 2021).

As CutMix, but the box is centred on the most salient pixel of the *partner* (the image the patch
is cut from), so the pasted patch carries the partner's object. The detector is OpenCV's
``StaticSaliencyFineGrained`` (Montabone & Soto 2010), the one both of the authors' training
scripts and openmixup call, computed in torch on the 8-bit image (:mod:`mixlab.core.saliency`,
bit-exact to OpenCV on uint8 input); ``detector="spectral_residual"`` selects OpenCV's
``StaticSaliencySpectralResidual`` (Hou & Zhang 2007) instead. The authors' scripts hand OpenCV
the *normalised float* image, where its fine-grained code reads the floats' bytes as pixels (the
map then says nothing about the image; measured in ``benchmarks/saliency_fidelity.py``): mixlab
follows the paper and quantises each image to 8 bits first (its own min-max range). The paper's
code uses one box for the whole batch (from the first partner's saliency); here each sample gets
the box centred on its own partner's peak, which is what the method describes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mixlab.core.boxes import kept_fraction, rand_boxes
from mixlab.core.checks import check_alpha, check_choice
from mixlab.core.saliency import SALIENCY_DETECTORS, saliency_map
from mixlab.mixers.base import Mixer
from mixlab.mixers.cutmix import cutmix_images

__all__ = ["SaliencyMix", "saliency_peaks"]


def saliency_peaks(images: Tensor, detector: str = "fine_grained") -> Tensor:
    """(B, 2) float ``(x, y)`` pixel coordinates of each image's saliency peak (the first maximum
    in row-major order, as ``np.argmax``).

    The one place SaliencyMix calls its saliency detector (float or uint8 images, any device,
    no host read: it compiles).
    """
    w = images.shape[-1]
    flat = saliency_map(images, detector).flatten(1).argmax(dim=1)  # maps are (B, H, W)
    return torch.stack([flat % w, flat // w], dim=1).float()


class SaliencyMix(Mixer):
    """SaliencyMix: CutMix whose box is centred on the partner's saliency peak.

    Args:
        num_classes: K.
        alpha: α of Beta(α, α) for λ (default 1.0, the paper's).
        detector: ``"fine_grained"`` (default, the authors' OpenCV detector) or
            ``"spectral_residual"``.
        **kwargs: the common mixer options, see :class:`~mixlab.mixers.base.Mixer`. The box
            size follows the λ granularity; its centre always follows each partner's saliency.
    """

    name = "saliencymix"

    def __init__(self, num_classes: int, alpha: float = 1.0, detector: str = "fine_grained", **kwargs) -> None:
        super().__init__(num_classes, **kwargs)
        self.alpha = check_alpha(alpha)
        self.detector = check_choice(detector, "detector", tuple(SALIENCY_DETECTORS))

    def make_params(self, images: Tensor, index: Tensor, coin: Tensor | None = None) -> dict:
        return {"lam": self.sample_lambda(images.shape[0], self.alpha, index, images.device, coin=coin)}

    def mix(self, images: Tensor, index: Tensor, params: dict):
        h, w = images.shape[-2:]
        peaks = saliency_peaks(images.detach(), self.detector)[index]  # centre = peak of the partner (the patch's source)
        boxes = rand_boxes(1.0 - params["lam"], h, w, centers=peaks)
        out = cutmix_images(images, index, boxes, out=self._out(images, params), pairing=self.pairing)
        return out, kept_fraction(boxes, h, w), None, boxes

    def _hyper_repr(self) -> str:
        return f"alpha={self.alpha}, detector={self.detector!r}"
