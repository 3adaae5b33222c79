"""Multi-view augmentation for self-supervised learning (BYOL's two views, DINO's multi-crop)."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2

from mixlab.transforms.views import MultiCrop, TwoViews, blur_kernel_size, byol_view


def _ops(compose: v2.Compose) -> dict[str, float]:
    """{operation name: probability} of a BYOL pipeline."""
    out = {}
    for t in compose.transforms:
        if isinstance(t, v2.RandomApply):
            out[type(t.transforms[0]).__name__] = t.p
        else:
            out[type(t).__name__] = getattr(t, "p", 1.0)
    return out


def test_byol_views_are_asymmetric_as_in_its_table_6():
    one, two = _ops(byol_view(32, 1)), _ops(byol_view(32, 2))
    for ops in (one, two):
        assert ops["RandomResizedCrop"] == 1.0 and ops["RandomHorizontalFlip"] == 0.5
        assert ops["ColorJitter"] == 0.8 and ops["RandomGrayscale"] == 0.2
    assert one["GaussianBlur"] == 1.0 and "RandomSolarize" not in one
    assert two["GaussianBlur"] == 0.1 and two["RandomSolarize"] == 0.2
    assert blur_kernel_size(224) == 23 and blur_kernel_size(32) == 3 and blur_kernel_size(96) == 11


def test_views_keep_uint8_chw_and_follow_the_seed():
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    torch.manual_seed(0)
    a = TwoViews(32)(image)
    torch.manual_seed(0)
    b = TwoViews(32)(image)
    assert [v.shape for v in a] == [(3, 32, 32)] * 2 and all(v.dtype == torch.uint8 for v in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], a[1])
    crops = MultiCrop(32, 16, num_local=4)(image)
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 4


@pytest.mark.parametrize("call, message", [
    (lambda: byol_view(32, 3), "view must be 1 or 2"),
    (lambda: byol_view(4, 1), "size must be an int >= 8"),
    (lambda: byol_view(32, 1, (0.0, 1.0)), "scale must satisfy"),
    (lambda: MultiCrop(num_local=-1), "num_local must be an int >= 0"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
