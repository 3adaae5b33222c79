"""Class activation maps (mixlab.evaluation.cam): CAM and Grad-CAM of hand-built models equal the
hand computation; CAM is the logit decomposition on mixlab and timm models; ViT Grad-CAM on the
tokens entering the last block; no parameter gradient left behind; the comparison figure."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mixlab.evaluation.cam import CAMOutput, class_activation_maps, plot_cams
from mixlab.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

# (1, 1, 4, 4) image whose 2x2 average pooling is [[1, 2], [3, 4]]
X = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)[None, None]
W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])  # classifier (3 classes, 2 channels)


class HandNet(nn.Module):
    """features = (p, p^2) with p the 2x2 average pooling of x; head = GAP + linear
    (``square=False``) or a linear layer on the squared GAP."""

    def __init__(self, square: bool = False) -> None:
        super().__init__()
        self.square = square
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.fc.weight.copy_(W)
            self.fc.bias.copy_(torch.tensor([0.5, 0.0, -1.0]) if not square else torch.zeros(3))

    def forward_features(self, x: Tensor) -> Tensor:
        p = nn.functional.avg_pool2d(x, 2)
        return torch.cat([p, p * p], dim=1)  # (B, 2, h/2, w/2)

    def forward_head(self, f: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = f.mean(dim=(2, 3))
        return self.fc(pooled ** 2 if self.square else pooled)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc


def test_cam_of_a_hand_built_model_equals_the_hand_computation():
    # f0 = [[1, 2], [3, 4]], f1 = [[1, 4], [9, 16]]; M_c = sum_k w_ck f_k; logits = mean(M_c) + b_c
    # logits: 2.5 + 0.5 = 3, 7.5, 2.5 - 7.5 - 1 = -6 -> top-2 classes (1, 0)
    out = class_activation_maps(HandNet(), X, topk=2, upsample=None)
    assert out.method == "cam" and out.layer == "features"
    assert out.classes.tolist() == [[1, 0]]
    assert out.cams.tolist() == [[[[1, 4], [9, 16]], [[1, 2], [3, 4]]]]
    assert out.probs[0].tolist() == pytest.approx(torch.tensor([3.0, 7.5, -6.0]).softmax(0)[[1, 0]].tolist())
    given = class_activation_maps(HandNet(), X, classes=torch.tensor([2]), upsample=None)
    assert given.cams.tolist() == [[[[0, -2], [-6, -12]]]]  # f0 - f1: no ReLU, no bias
    # bilinear, align_corners=False: 2 -> 4 weights per axis (1, 0), (.75, .25), (.25, .75), (0, 1)
    up = class_activation_maps(HandNet(), X, topk=1, upsample="bilinear")
    assert up.cams[0, 0].tolist() == [[1, 1.75, 3.25, 4], [3, 4, 6, 7], [7, 8.5, 11.5, 13], [9, 10.75, 14.25, 16]]


def test_gradcam_of_a_hand_built_model_equals_the_hand_computation():
    # y_c = sum_k w_ck m_k^2 with m = (2.5, 7.5): dy_c/df_k(i, j) = w_ck 2 m_k / 4, so alpha_k = w_ck m_k / 2
    # class 0: alpha = (1.25, 0) -> 1.25 f0; class 1: (0, 3.75) -> 3.75 f1; class 2: (1.25, -3.75): all < 0 -> 0
    model = HandNet(square=True)
    out = class_activation_maps(model, X, classes=torch.tensor([[0, 1, 2]]), upsample=None)
    assert out.method == "gradcam" and out.layer == "features"
    assert out.cams[0].tolist() == [[[1.25, 2.5], [3.75, 5.0]], [[3.75, 15.0], [33.75, 60.0]], [[0, 0], [0, 0]]]
    assert class_activation_maps(model, X, upsample=None).classes.tolist() == [[1]]  # logits 6.25, 56.25, -50
    with pytest.raises(ValueError, match="method='cam' needs a head that is global average pooling"):
        class_activation_maps(model, X, method="cam")


def test_gradcam_of_a_gap_linear_head_is_relu_cam_over_the_area():
    torch.manual_seed(0)
    model = create_model("resnet_small", 5, width=8)
    x = torch.randn(3, 3, 16, 16)
    cam = class_activation_maps(model, x, topk=2, upsample=None)
    grad = class_activation_maps(model, x, topk=2, upsample=None, method="gradcam")
    assert cam.method == "cam" and grad.method == "gradcam" and torch.equal(cam.classes, grad.classes)
    h, w = cam.cams.shape[-2:]
    torch.testing.assert_close(grad.cams, cam.cams.relu() / (h * w))


@pytest.mark.parametrize("name,kwargs", [
    ("resnet_small", {"width": 8}),
    ("preactresnet18", {}),
    ("vit_tiny_patch4", {"embed_dim": 32, "depth": 2, "num_heads": 2, "num_stages": 2}),
    ("timm:resnet10t", {}),
])
def test_cam_is_the_logit_decomposition(name, kwargs):
    """For a GAP + linear head, mean_{x,y} M_c + b_c is the logit of class c."""
    torch.manual_seed(0)
    model = create_model(name, 6, **kwargs)
    x = torch.randn(2, 3, 32, 32)
    out = class_activation_maps(model, x, topk=3, upsample=None)
    assert out.method == "cam" and out.cams.shape[:2] == (2, 3)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    bias = model.get_classifier().bias
    torch.testing.assert_close(out.cams.mean(dim=(2, 3)) + bias[out.classes], logits.gather(1, out.classes),
                               rtol=1e-4, atol=1e-4)
    assert torch.equal(out.classes, logits.topk(3, dim=1).indices)


def _tiny_timm_vit() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    from mixlab.models import TimmModel

    return TimmModel(VisionTransformer(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2, num_classes=5))


def test_vit_gradcam_on_the_tokens_entering_the_last_block():
    torch.manual_seed(0)
    model = _tiny_timm_vit()
    x = torch.randn(2, 3, 16, 16)
    out = class_activation_maps(model, x, topk=2, upsample=None)
    assert out.method == "gradcam" and out.layer == "tokens" and out.cams.shape == (2, 2, 4, 4)
    # by hand: run the ViT block by block, differentiate w.r.t. the last block's input tokens
    vit = model.model.eval()
    tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    for block in vit.blocks[:-1]:
        tokens = block(tokens)
    tokens = tokens.detach().requires_grad_(True)
    logits = vit.forward_head(vit.norm(vit.blocks[-1](tokens)))
    for j in range(2):
        (grad,) = torch.autograd.grad(logits.gather(1, out.classes[:, j:j + 1]).sum(), tokens, retain_graph=True)
        patches, g = tokens[:, 1:].detach(), grad[:, 1:]  # drop the class token
        expected = torch.relu((patches * g.mean(dim=1, keepdim=True)).sum(dim=2)).view(2, 4, 4)
        torch.testing.assert_close(out.cams[:, j], expected)
    assert out.cams.abs().sum() > 0  # a class-token head still reaches the patch tokens there
    up = class_activation_maps(model, x, topk=2)
    assert up.cams.shape == (2, 2, 16, 16)
    with pytest.raises(ValueError, match="is a ViT"):
        class_activation_maps(model, x, method="cam")


@pytest.mark.parametrize("which", ["cam", "gradcam", "vit"])
def test_no_parameter_gradient_left_and_mode_restored(which):
    torch.manual_seed(0)
    model = _tiny_timm_vit() if which == "vit" else create_model("resnet_small", 4, width=8)
    model.train()
    x = torch.randn(2, 3, 16, 16)
    out = class_activation_maps(model, x, topk=2, method="auto" if which == "vit" else which)
    assert out.method == ("gradcam" if which == "vit" else which)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert not out.cams.requires_grad


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_batched_maps_equal_one_image_at_a_time(method):
    torch.manual_seed(0)
    model = create_model("resnet_small", 4, width=8)
    x = torch.randn(3, 3, 16, 16)
    whole = class_activation_maps(model, x, topk=2, method=method)
    for i in range(3):
        one = class_activation_maps(model, x[i:i + 1], topk=2, method=method)
        torch.testing.assert_close(one.cams[0], whole.cams[i], rtol=1e-4, atol=1e-5)
        assert torch.equal(one.classes[0], whole.classes[i])


def test_errors_name_the_argument():
    model = HandNet()
    with pytest.raises(ValueError, match="images must be a"):
        class_activation_maps(model, X[0])
    with pytest.raises(ValueError, match="images must be a"):
        class_activation_maps(model, X.long())
    with pytest.raises(ValueError, match="topk must be <= the number of classes"):
        class_activation_maps(model, X, topk=4)
    with pytest.raises(ValueError, match="classes must lie in"):
        class_activation_maps(model, X, classes=torch.tensor([3]))
    with pytest.raises(TypeError, match="classes must be an integer tensor"):
        class_activation_maps(model, X, classes=torch.tensor([0.0]))
    with pytest.raises(ValueError, match="method must be one of"):
        class_activation_maps(model, X, method="rollout")
    with pytest.raises(ValueError, match="upsample must be one of"):
        class_activation_maps(model, X, upsample="nearest")
    with pytest.raises(TypeError, match="needs model.forward_features"):
        class_activation_maps(nn.Linear(4, 2), X)


def test_plot_cams_rows_images_columns_runs(tmp_path):
    images = torch.rand(2, 3, 8, 8)
    runs = []
    for name, k in (("vanilla", 2), ("mixup", 1)):
        runs.append((name, CAMOutput(torch.rand(2, k, 8, 8), torch.tensor([[0, 1], [2, 0]])[:, :k],
                                     torch.tensor([[0.9, 0.05], [0.6, 0.3]])[:, :k], "cam", "features")))
    path = tmp_path / "figs" / "cams.png"
    fig = plot_cams(images, runs, ["cat", "dog", "bird"], labels=torch.tensor([0, 1]), path=path)
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
    assert len(fig.axes) == 2 * (1 + 2 + 1)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == ["true: cat", "cat 0.90", "dog 0.05", "cat 0.90"] and "bird 0.60" in titles
    assert {t.get_text() for t in fig.texts} == {"vanilla", "mixup"}
    with pytest.raises(ValueError, match="to match the images"):
        plot_cams(images, [("bad", CAMOutput(torch.rand(2, 1, 4, 4), torch.zeros(2, 1, dtype=torch.long),
                                              torch.ones(2, 1), "cam", "features"))], ["a"])
    with pytest.raises(ValueError, match="at least one"):
        plot_cams(images, [], ["a"])
