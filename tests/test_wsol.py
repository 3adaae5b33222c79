"""MaxBoxAccV2 (mixlab.evaluation.wsol): hand-computed cases (threshold sweep, several contours,
hole contours, several GT boxes per image), and agreement with the official procedure run with
OpenCV (clovaai/wsolevaluation: cv2.resize INTER_CUBIC, cv2.threshold, cv2.findContours RETR_TREE)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixlab.evaluation.wsol import (
    MaxBoxAccV2,
    box_iou_inclusive,
    cam_thresholds,
    component_boxes,
    normalize_scoremaps,
    resize_scoremaps,
    scoremap_boxes,
)


def _boxes_by_threshold(found, image: int, num_thresholds: int) -> list[list[tuple[int, ...]]]:
    """The boxes of one image at each threshold, sorted."""
    return [sorted(map(tuple, found.boxes[(found.image == image) & (found.threshold == k)].tolist()))
            for k in range(num_thresholds)]


# -- hand-computed ---------------------------------------------------------------------------------
# Three 4x4 (or 4x6) maps, CAM thresholds (0, 0.5) (cam_curve_interval=0.5): u = uint8(255 s), a pixel
# is on when u > int(tau * max u) (levels 0 and 127 here).
# Image 1: a 2x2 blob (1.0 / 0.8 -> u 255 / 204) and a lone pixel (0.2 -> u 51) in the far corner.
IMG1 = [[1.0, 0.8, 0, 0],
        [0.8, 0.8, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0.2]]
# Image 2: a ring with a one-pixel hole (1.0) and a tail (0.4 -> u 102) on the right.
IMG2 = [[1, 1, 1, 0, 0, 0],
        [1, 0, 1, 0.4, 0.4, 0.4],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0]]
# Image 3: a bright pair (1.0) on a 0.3 plateau (u 76), one pixel at 0.
IMG3 = [[1.0, 1.0, 0.3, 0.3],
        [0.3, 0.3, 0.3, 0.3],
        [0.3, 0.3, 0.3, 0.3],
        [0.3, 0.3, 0.3, 0.0]]


def test_boxes_of_hand_maps_every_contour_and_every_threshold():
    thresholds = cam_thresholds(0.5)
    assert thresholds.tolist() == [0.0, 0.5]
    one = scoremap_boxes(torch.tensor([IMG1], dtype=torch.float64), thresholds)
    # tau = 0: the blob -> (x, y, x + w, y + h) = (0, 0, 2, 2); the corner pixel -> (3, 3, 4, 4) clipped to
    # (3, 3, 3, 3); tau = 0.5: the blob only (204 > 127, 51 is not)
    assert _boxes_by_threshold(one, 0, 2) == [[(0, 0, 2, 2), (3, 3, 3, 3)], [(0, 0, 2, 2)]]
    two = scoremap_boxes(torch.tensor([IMG2], dtype=torch.float64), thresholds)
    # tau = 0: outer contour of ring + tail (0, 0, 6 -> 5, 3); the hole's contour runs along the ring:
    # columns/rows 0..2 -> (0, 0, 3, 3). tau = 0.5: the tail is off: outer and hole give (0, 0, 3, 3)
    assert _boxes_by_threshold(two, 0, 2) == [[(0, 0, 3, 3), (0, 0, 5, 3)], [(0, 0, 3, 3), (0, 0, 3, 3)]]
    flat = scoremap_boxes(torch.zeros(1, 4, 4, dtype=torch.float64), thresholds)
    assert _boxes_by_threshold(flat, 0, 2) == [[(0, 0, 0, 0)], [(0, 0, 0, 0)]]  # no contour: one zero box


def test_inclusive_iou_by_hand():
    iou = box_iou_inclusive(torch.tensor([[0, 0, 1, 1], [0, 0, 2, 2], [5, 5, 6, 6], [0, 0, 0, 0]]),
                            torch.tensor([[1, 1, 2, 2], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]))
    # 1 shared pixel of 4 + 4; 4 of 9 (inside); disjoint; the zero box is the pixel (0, 0): 1 / 4
    assert iou.dtype == torch.float64 and iou.tolist() == [1 / 7, 4 / 9, 0.0, 0.25]
    assert box_iou_inclusive(torch.tensor([3, 3, 1, 1]), torch.tensor([3, 3, 0, 0])).item() == 0.0  # union <= 0


def test_maxboxacc_by_hand_sweep_several_contours_and_gt_boxes():
    cams = [torch.tensor(m, dtype=torch.float64) for m in (IMG1, IMG2, IMG3)]
    gt = [torch.tensor([[0, 0, 1, 1], [3, 2, 3, 3]]),  # two GT boxes
          torch.tensor([[0, 0, 2, 2]]),
          torch.tensor([[0, 0, 1, 0]])]
    # best IoU over boxes and GT boxes, per threshold (0, 0.5):
    #   img 1: tau 0: corner pixel (3,3,3,3) vs GT 2 -> 1/2; blob vs GT 1 -> 4/9 -- max 0.5; tau 0.5: 4/9
    #   img 2: tau 0: hole box (0,0,3,3) vs GT -> 9/16 (the outer box only 9/24); tau 0.5: 9/16
    #   img 3: tau 0: (0,0,3,3) vs a 2-pixel GT -> 2/16; tau 0.5: (0,0,2,1) -> 2/6
    # localised (IoU >= delta / 100):   delta 30: [2, 3] of 3   delta 50: [2, 1]   delta 70: [0, 0]
    metric = MaxBoxAccV2(cam_curve_interval=0.5)
    for cam, boxes in zip(cams, gt):  # streamed one image at a time: maps of different sizes
        metric.update(cam[None], [boxes])
    assert metric.curves().tolist() == [[200 / 3, 100.0], [200 / 3, 100 / 3], [0.0, 0.0]]
    out = metric.compute()
    assert out == {"maxboxacc": (100.0 + 200 / 3 + 0.0) / 3, "maxboxacc@30": 100.0, "best_threshold@30": 0.5,
                   "maxboxacc@50": 200 / 3, "best_threshold@50": 0.0, "maxboxacc@70": 0.0,
                   "best_threshold@70": 0.0, "n": 3}


def test_batched_padded_and_streamed_updates_agree():
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(6, 4, 4, generator=g)
    gt = [torch.tensor([[1, 1, 5, 6]]), torch.tensor([[0, 0, 11, 11], [4, 4, 6, 6]]), torch.tensor([[3, 2, 8, 10]]),
          torch.tensor([[6, 6, 11, 11]]), torch.tensor([[0, 5, 6, 9], [2, 2, 3, 3], [9, 0, 11, 4]]),
          torch.tensor([[3, 3, 9, 9]])]
    whole = MaxBoxAccV2()
    whole.update(cams, gt, image_size=(12, 12))
    parts = MaxBoxAccV2()
    for i in range(0, 6, 4):
        parts.update(cams[i:i + 4], gt[i:i + 4], image_size=(12, 12))
    assert torch.equal(whole.curves(), parts.curves()) and whole.compute() == parts.compute()
    single = MaxBoxAccV2()
    single.update(cams[[0, 2]], torch.stack([gt[0][0], gt[2][0]]), image_size=(12, 12))  # (B, 4) tensor
    listed = MaxBoxAccV2()
    listed.update(cams[[0, 2]], [gt[0], gt[2]], image_size=(12, 12))
    assert single.compute() == listed.compute()


def test_normalisation_constant_and_nan_maps_become_zero():
    maps = torch.tensor([[[1.0, 3.0], [5.0, 2.0]], [[2.0, 2.0], [2.0, 2.0]], [[0.0, float("nan")], [1.0, 2.0]]])
    out = normalize_scoremaps(maps)
    assert out.dtype == torch.float64
    assert out[0].tolist() == [[0.0, 0.5], [1.0, 0.25]] and out[1].eq(0).all() and out[2].eq(0).all()


def test_component_boxes_by_hand():
    mask = torch.tensor([[[1, 0, 0, 1],
                          [0, 1, 0, 1],
                          [0, 0, 0, 1],
                          [1, 1, 0, 0]]], dtype=torch.bool)
    boxes8, idx8 = component_boxes(mask, 8)  # (0,0)-(1,1) touch by a corner
    assert sorted(map(tuple, boxes8.tolist())) == [(0, 0, 1, 1), (0, 3, 1, 3), (3, 0, 3, 2)]
    assert idx8.tolist() == [0] * 3
    boxes4, _ = component_boxes(mask, 4)
    assert sorted(map(tuple, boxes4.tolist())) == [(0, 0, 0, 0), (0, 3, 1, 3), (1, 1, 1, 1), (3, 0, 3, 2)]
    spiral = torch.tensor([[1, 1, 1, 1, 1],
                           [0, 0, 0, 0, 1],
                           [1, 1, 1, 0, 1],
                           [1, 0, 0, 0, 1],
                           [1, 1, 1, 1, 1]], dtype=torch.bool)[None].repeat(3, 1, 1)
    boxes, idx = component_boxes(spiral, 4)
    assert boxes.tolist() == [[0, 0, 4, 4]] * 3 and idx.tolist() == [0, 1, 2]


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="cam_curve_interval"):
        MaxBoxAccV2(cam_curve_interval=0)
    with pytest.raises(ValueError, match="iou_thresholds"):
        MaxBoxAccV2(iou_thresholds=(0.5,))
    metric = MaxBoxAccV2()
    with pytest.raises(ValueError, match="cams must be a"):
        metric.update(torch.rand(2, 1, 4, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="gt_boxes"):
        metric.update(torch.rand(2, 4, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least one ground-truth box"):
        metric.update(torch.rand(2, 4, 4), [torch.zeros(1, 4), torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="no image was added"):
        metric.compute()
    with pytest.raises(ValueError, match="connectivity"):
        component_boxes(torch.ones(1, 2, 2, dtype=torch.bool), 6)


# -- agreement with the official procedure (OpenCV) ------------------------------------------------
def _official_boxes(scoremap: np.ndarray, thresholds: np.ndarray, cv2) -> list[list[tuple[int, ...]]]:
    """The boxes the official compute_bboxes_from_scoremaps(multi_contour_eval=True) gives."""
    h, w = scoremap.shape
    image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    out = []
    for tau in thresholds:
        _, binary = cv2.threshold(image, int(tau * np.max(image)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        rects = [cv2.boundingRect(c) for c in contours]
        out.append(sorted((x, y, min(x + bw, w - 1), min(y + bh, h - 1)) for x, y, bw, bh in rects) or [(0, 0, 0, 0)])
    return out


def _official_maxboxacc(cams: list[np.ndarray], gts: list[np.ndarray], size: tuple[int, int], cv2) -> list[float]:
    thresholds = np.arange(0, 1, 0.01)
    correct = np.zeros((3, len(thresholds)))
    for cam, gt in zip(cams, gts):
        cam = cv2.resize(cam, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
        cam = np.zeros_like(cam) if cam.min() == cam.max() else (cam - cam.min()) / (cam - cam.min()).max()
        for k, boxes in enumerate(_official_boxes(cam, thresholds, cv2)):
            best = max(box_iou_inclusive(torch.tensor(b), torch.tensor(g)).item() for b in boxes for g in gt)
            for d, delta in enumerate((30, 50, 70)):
                correct[d, k] += best >= delta / 100
    return [float(v) for v in (correct * 100.0 / len(cams)).max(axis=1)]


@pytest.mark.parametrize("kind", ["noise", "smooth", "sparse"])
def test_boxes_match_opencv_find_contours(kind):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng({"noise": 0, "smooth": 1, "sparse": 2}[kind])
    thresholds = np.arange(0, 1, 0.01)
    for _ in range(8):
        h, w = (int(v) for v in rng.integers(2, 24, 2))
        if kind == "noise":
            m = rng.random((h, w))
        elif kind == "smooth":
            m = cv2.resize(rng.random((max(1, h // 4), max(1, w // 4))), (w, h), interpolation=cv2.INTER_CUBIC)
        else:
            m = (rng.random((h, w)) < 0.55) * rng.random((h, w))
        s = normalize_scoremaps(torch.from_numpy(m)[None])
        found = scoremap_boxes(s, cam_thresholds())
        assert _boxes_by_threshold(found, 0, len(thresholds)) == _official_boxes(s[0].numpy(), thresholds, cv2)


@pytest.mark.parametrize("shape", [(7, 7, 224, 224), (4, 4, 32, 32), (5, 3, 20, 17), (6, 9, 5, 4), (1, 1, 5, 5)])
def test_resize_is_opencv_inter_cubic_bit_for_bit(shape):
    cv2 = pytest.importorskip("cv2")
    h, w, out_h, out_w = shape
    maps = np.random.default_rng(h * w).standard_normal((2, h, w))
    expected = np.stack([cv2.resize(m, (out_w, out_h), interpolation=cv2.INTER_CUBIC) for m in maps])
    assert np.array_equal(resize_scoremaps(torch.from_numpy(maps), (out_h, out_w)).numpy(), expected)


def test_maxboxacc_matches_the_official_procedure():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    cams = [rng.standard_normal((6, 6)) for _ in range(10)]
    cams[3][:] = 1.0  # a constant map
    gts = []
    for _ in cams:
        n = int(rng.integers(1, 3))
        xy = rng.integers(0, 20, (n, 2))
        gts.append(np.concatenate([xy, np.minimum(xy + rng.integers(3, 16, (n, 2)), 23)], axis=1))
    metric = MaxBoxAccV2()
    metric.update(torch.from_numpy(np.stack(cams)), [torch.from_numpy(g) for g in gts], image_size=(24, 24))
    out = metric.compute()
    expected = _official_maxboxacc(cams, gts, (24, 24), cv2)
    assert [out["maxboxacc@30"], out["maxboxacc@50"], out["maxboxacc@70"]] == expected
    assert out["maxboxacc"] == pytest.approx(sum(expected) / 3)


def test_component_boxes_match_scipy_labelling():
    ndi = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(4)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 20, 2))
        masks = rng.random((3, h, w)) < rng.random()
        for connectivity in (4, 8):
            boxes, index = component_boxes(torch.from_numpy(masks), connectivity)
            structure = ndi.generate_binary_structure(2, 2 if connectivity == 8 else 1)
            for i in range(3):
                labels, _ = ndi.label(masks[i], structure=structure)
                slices = ndi.find_objects(labels)
                expected = sorted((s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1) for s in slices)
                assert sorted(map(tuple, boxes[index == i].tolist())) == expected
