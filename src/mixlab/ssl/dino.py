"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"), with
SDMP (Ren et al. 2022, §3.3 case 2, Eq. 6-9) as an option.

Self-distillation without labels: a student (backbone + :class:`DINOHead`) matches a momentum
teacher's centred and sharpened outputs on 2 global and n local crops (Eq. 6:
``H(P_t(x_i), P_s(x_v))`` over pairs of a global view and another view). SDMP replaces the last
``num_mixed_local`` local crops by their intra-batch mixes and adds the source and intra-batch
teachers' losses (Eq. 7-8, :mod:`mixlab.ssl.sdmp`).

The equations in full, the defaults and where they come from: docs/methods/dino.md.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from mixlab.core.checks import check_alpha, check_bool, check_probability
from mixlab.core.momentum import cosine_momentum, frozen_copy, momentum_update_
from mixlab.methods.base import StepOutput
from mixlab.ssl.base import SelfSupervised, embed, feature_dim, positive_int
from mixlab.ssl.sdmp import SDMP_OPS, SDMPMixing, mixed_teacher, sdmp_weights
from mixlab.transforms.views import MultiCrop

__all__ = ["DINO", "DINOHead", "pair_cross_entropy"]


def _positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _scale(value: Any, name: str) -> tuple[float, float]:
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not (ok and 0 < value[0] <= value[1] <= 1):
        raise ValueError(f"{name} must be a pair (min, max) with 0 < min <= max <= 1, got {value!r}")
    return float(value[0]), float(value[1])


class DINOHead(nn.Module):
    """DINO's projection head: MLP → L2-normalised bottleneck → weight-normalised linear (no bias).

    The MLP has ``num_layers`` linear layers (``in_dim → hidden_dim → … → bottleneck_dim``) with
    GELU between them (and BatchNorm before each GELU if ``use_bn``), initialised with a truncated
    normal of std 0.02 and zero biases. The last layer is ``weight_norm(Linear(bottleneck_dim,
    out_dim, bias=False))`` (``torch.nn.utils.parametrizations``): its weight is ``g · v / ‖v‖``
    per output row, with the magnitude g (``original0``) set to 1; with ``norm_last_layer`` g stays
    1 and is not trained (DINO's default, which it finds stabilises training), otherwise it is learnt.

    Args:
        in_dim: width of the backbone's features.
        out_dim: K, the number of outputs (DINO: 65536).
        hidden_dim: width of the hidden layers (2048).
        bottleneck_dim: width of the normalised bottleneck (256).
        num_layers: number of linear layers of the MLP, >= 1 (3).
        norm_last_layer: keep the last layer's magnitude fixed at 1 (True).
        use_bn: BatchNorm in the MLP (False, DINO's ViT setting).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, norm_last_layer: bool = True, use_bn: bool = False) -> None:
        super().__init__()
        widths = [positive_int(in_dim, "in_dim")]
        widths += [positive_int(hidden_dim, "hidden_dim")] * (positive_int(num_layers, "num_layers") - 1)
        widths.append(positive_int(bottleneck_dim, "bottleneck_dim"))
        self.norm_last_layer = check_bool(norm_last_layer, "norm_last_layer")
        norm = [nn.BatchNorm1d] if check_bool(use_bn, "use_bn") else []
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
            linear = nn.Linear(d_in, d_out)
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
            layers.append(linear)
            if i < num_layers - 1:
                layers += [bn(d_out) for bn in norm] + [nn.GELU()]
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.utils.parametrizations.weight_norm(
            nn.Linear(widths[-1], positive_int(out_dim, "out_dim"), bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not self.norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(nn.functional.normalize(self.mlp(x), dim=-1))


def pair_cross_entropy(teacher_probs: Tensor, student_log_probs: Tensor, skip_same_view: bool = False) -> Tensor:
    """``mean over pairs (i, v) of mean_b −Σ_k P_t[i, b, k] log P_s[v, b, k]`` (DINO's loss).

    ``teacher_probs`` (T, B, K) and ``student_log_probs`` (V, B, K); with ``skip_same_view`` the
    pairs with ``v == i`` (the student and the teacher on the same view) are left out.
    """
    if teacher_probs.ndim != 3 or student_log_probs.ndim != 3 or teacher_probs.shape[1:] != student_log_probs.shape[1:]:
        raise ValueError(f"teacher (T, B, K) and student (V, B, K) outputs must share B and K, got "
                         f"{tuple(teacher_probs.shape)} and {tuple(student_log_probs.shape)}")
    ce = -torch.einsum("ibk,vbk->iv", teacher_probs, student_log_probs) / teacher_probs.shape[1]
    if skip_same_view:  # the positions of the other pairs, found on the host: a mask would wait for the device
        others = (~torch.eye(*ce.shape, dtype=torch.bool)).flatten().nonzero().squeeze(1)
        return ce.flatten()[others.to(ce.device, non_blocking=True)].mean()
    return ce.mean()


class DINO(SelfSupervised):
    """DINO pre-training of the model's backbone, optionally with SDMP.

    Args:
        out_dim: K, the head's output width (65536).
        hidden_dim: hidden width of the head's MLP (2048).
        bottleneck_dim: the head's bottleneck width (256).
        head_layers: linear layers in the head's MLP (3).
        norm_last_layer: the last layer's magnitude fixed at 1 (True, see :class:`DINOHead`).
        use_bn: BatchNorm in the head (False).
        student_temp: T_s, > 0 (0.1).
        teacher_temp: T_t after the warm-up, > 0 (0.07).
        warmup_teacher_temp: T_t at the start, > 0 (0.04).
        teacher_temp_warmup: fraction of training over which T_t rises linearly, in [0, 1] (0.1).
        center_momentum: c of the centre's moving average, in [0, 1] (0.9).
        momentum: m_0 of the teacher, in [0, 1] (0.996), rising to 1 by a cosine.
        freeze_last_layer: fraction of training, in [0, 1], during which the student head's last
            layer gets a zero gradient (0.01). Gradient hooks zero it while the ``progress`` of the
            latest :meth:`training_step` is below this fraction. The optimizer's weight decay still
            scales the direction v, which leaves ``v / ‖v‖`` and so the layer unchanged; with
            ``norm_last_layer=False`` it also shrinks the learnt magnitude g a little (DINO's code
            drops the gradient instead, so its optimizer skips the layer).
        num_local: local crops per image, >= 0 (6).
        local_size: side of the local crops, >= 8 (default half the global side).
        global_scale, local_scale: the crops' area ranges ((0.4, 1.0) and (0.05, 0.4)).
        sdmp: mix with SDMP (False).
        num_mixed_local: how many of the local crops (the last ones) SDMP replaces by their mixes,
            in [1, num_local] with ``sdmp`` (default ``num_local // 2``).
        ops: SDMP's mixing operations (Table 8), any of ``("mixup", "cutmix", "resizemix")``.
        per_sample: SDMP's λ per image (default) or per batch (Table 7).
        static_source, static_intra: Table 6's static λ in the source / intra-batch loss.
        mix_alpha: λ ~ Beta(α, α) for Mixup and CutMix (1.0).
        image_size: side of the global views (default: the training images').

    Example:
        >>> method = DINO(out_dim=1024, hidden_dim=512, bottleneck_dim=64, sdmp=True)
        >>> method.setup(model, torch.Generator().manual_seed(0))
        >>> loss = method.training_step(model, (views, labels), progress=0.0).loss   # 2 + 6 views
    """

    name = "dino"

    def __init__(self, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 head_layers: int = 3, norm_last_layer: bool = True, use_bn: bool = False,
                 student_temp: float = 0.1, teacher_temp: float = 0.07, warmup_teacher_temp: float = 0.04,
                 teacher_temp_warmup: float = 0.1, center_momentum: float = 0.9, momentum: float = 0.996,
                 freeze_last_layer: float = 0.01, num_local: int = 6, local_size: int | None = None,
                 global_scale: tuple[float, float] = (0.4, 1.0), local_scale: tuple[float, float] = (0.05, 0.4),
                 sdmp: bool = False, num_mixed_local: int | None = None, ops: Sequence[str] = SDMP_OPS,
                 per_sample: bool = True, static_source: bool = False, static_intra: bool = False,
                 mix_alpha: float = 1.0, image_size: int | None = None) -> None:
        super().__init__(image_size)
        self.out_dim = positive_int(out_dim, "out_dim")
        self.hidden_dim = positive_int(hidden_dim, "hidden_dim")
        self.bottleneck_dim = positive_int(bottleneck_dim, "bottleneck_dim")
        self.head_layers = positive_int(head_layers, "head_layers")
        self.norm_last_layer = check_bool(norm_last_layer, "norm_last_layer")
        self.use_bn = check_bool(use_bn, "use_bn")
        self.student_temp = _positive_float(student_temp, "student_temp")
        self.teacher_temp = _positive_float(teacher_temp, "teacher_temp")
        self.warmup_teacher_temp = _positive_float(warmup_teacher_temp, "warmup_teacher_temp")
        self.teacher_temp_warmup = check_probability(teacher_temp_warmup, "teacher_temp_warmup")
        self.center_momentum = check_probability(center_momentum, "center_momentum")
        self.momentum = check_probability(momentum, "momentum")
        self.freeze_last_layer = check_probability(freeze_last_layer, "freeze_last_layer")
        self.num_local = positive_int(num_local, "num_local", low=0)
        if local_size is not None:
            positive_int(local_size, "local_size", low=8)
        self.local_size = local_size
        self.global_scale = _scale(global_scale, "global_scale")
        self.local_scale = _scale(local_scale, "local_scale")
        self.sdmp = check_bool(sdmp, "sdmp")
        mixed = self.num_local // 2 if num_mixed_local is None else num_mixed_local
        if isinstance(mixed, bool) or not isinstance(mixed, int) or not (int(self.sdmp) <= mixed <= self.num_local):
            raise ValueError(f"num_mixed_local must be an int in [{int(self.sdmp)}, num_local={self.num_local}]"
                             f"{' with sdmp=True (SDMP mixes local crops)' if self.sdmp else ''}, got {mixed!r}"
                             f"{' (num_local // 2)' if num_mixed_local is None else ''}")
        self.num_mixed_local = mixed
        self.static_source = check_bool(static_source, "static_source")
        self.static_intra = check_bool(static_intra, "static_intra")
        self.mixing = SDMPMixing(ops, check_alpha(mix_alpha, "mix_alpha"), per_sample)
        self.register_buffer("center", torch.zeros(1, self.out_dim))
        self.head: DINOHead | None = None  # sized by the backbone in setup()
        self.teacher_backbone: nn.Module | None = None
        self.teacher_head: DINOHead | None = None
        self._progress = 0.0  # of the latest training_step, read by the last layer's gradient hooks

    # ------------------------------------------------------------------ setup
    def views(self, image_size: int) -> Callable:
        """DINO's multi-crop: 2 global views at ``image_size``, ``num_local`` local ones."""
        return MultiCrop(global_size=image_size, local_size=self.local_size or image_size // 2,
                         num_local=self.num_local, global_scale=self.global_scale, local_scale=self.local_scale)

    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        """Build the student head for the backbone's width, the teacher copies and the centre, on its
        device; the student head's last layer gets the gradient hooks of ``freeze_last_layer``."""
        super().setup(model, generator)
        self.mixing.generator = generator
        device = next(model.parameters()).device
        if self.head is None:
            self.head = DINOHead(feature_dim(model), self.out_dim, self.hidden_dim, self.bottleneck_dim,
                                 self.head_layers, self.norm_last_layer, self.use_bn).to(device)
            for p in self.head.last_layer.parameters():
                if p.requires_grad:
                    p.register_hook(self._last_layer_grad)
        self.center = self.center.to(device)
        self.teacher_backbone = frozen_copy(model)
        self.teacher_head = frozen_copy(self.head)

    def _last_layer_grad(self, grad: Tensor) -> Tensor | None:
        return torch.zeros_like(grad) if self._progress < self.freeze_last_layer else None

    def _ready(self) -> tuple[DINOHead, nn.Module, DINOHead]:
        if self.head is None or self.teacher_backbone is None or self.teacher_head is None:
            raise RuntimeError("DINO.setup(model) must be called before training (the trainer does it)")
        return self.head, self.teacher_backbone, self.teacher_head

    def param_groups(self, base_lr: float) -> list[dict]:
        """The student head's trainable parameters, with the backbone's lr and schedule; no weight
        decay on biases and other 1-D parameters (DINO's, and the trainer's rule for the model)."""
        params = [p for p in self._ready()[0].parameters() if p.requires_grad]
        return [{"params": [p for p in params if p.ndim >= 2]},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]

    # ------------------------------------------------------------------ the loss
    def teacher_temperature(self, progress: float) -> float:
        """T_t at training fraction ``progress``: linear from ``warmup_teacher_temp`` to
        ``teacher_temp`` over the first ``teacher_temp_warmup`` of training, then constant."""
        if self.teacher_temp_warmup == 0:
            return self.teacher_temp
        t = min(max(float(progress) / self.teacher_temp_warmup, 0.0), 1.0)
        return self.warmup_teacher_temp + t * (self.teacher_temp - self.warmup_teacher_temp)

    @staticmethod
    def multi_crop_forward(backbone: nn.Module, head: nn.Module, views: Sequence[Tensor]) -> Tensor:
        """(V, B, K) head outputs of every view; consecutive views of one size share a backbone pass
        (their BatchNorm statistics too, as DINO's multi-crop wrapper) and all share one head pass."""
        if len({v.shape[0] for v in views}) != 1:
            raise ValueError(f"every view must hold the same images, got batch sizes {[v.shape[0] for v in views]}")
        features, start = [], 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape[1:] == views[start].shape[1:]:
                end += 1
            features.append(embed(backbone, torch.cat(list(views[start:end]))))
            start = end
        return head(torch.cat(features)).unflatten(0, (len(views), -1))

    def sharpen(self, teacher_out: Tensor, temperature: float) -> Tensor:
        """P_t = softmax((teacher_out − centre) / T_t), in float32."""
        return ((teacher_out.float() - self.center) / temperature).softmax(dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor) -> None:
        """``c ← c_m · c + (1 − c_m) · mean`` of the teacher's raw outputs (…, K), the mean taken
        over every row of every data-parallel process."""
        rows = teacher_out.reshape(-1, teacher_out.shape[-1]).float()
        total, count = rows.sum(dim=0, keepdim=True), rows.shape[0]
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(total)
            count *= dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        head, teacher_backbone, teacher_head = self._ready()
        views = self.unpack(batch)
        if len(views) != 2 + self.num_local:
            raise ValueError(f"DINO takes 2 global + {self.num_local} local views per image, got {len(views)}")
        self._progress = float(progress)
        temp = self.teacher_temperature(progress)
        globals_ = views[:2]
        mixed = self.num_mixed_local if self.sdmp and self.training else 0
        clean = len(views) - mixed
        if mixed:  # one draw, applied alike to every mixed crop and (boxes scaled up) to the global views
            draw = self.mixing.draw(views[clean])
            crops = [self.mixing.apply(v, draw) for v in views[clean:]]
            lam = crops[0][1]
            views = views[:clean] + [c for c, _ in crops]
        student = self.multi_crop_forward(model, head, views)
        log_p_s = (student.float() / self.student_temp).log_softmax(dim=-1)
        with torch.no_grad():
            teacher = self.multi_crop_forward(teacher_backbone, teacher_head, globals_).float()
        p_t = self.sharpen(teacher, temp)
        loss = loss_dino = pair_cross_entropy(p_t, log_p_s[:clean], skip_same_view=True)
        logs: dict[str, Any] = {"teacher_temp": temp}
        if mixed:
            with torch.no_grad():
                teacher_m = self.multi_crop_forward(teacher_backbone, teacher_head,
                                                    [self.mixing.apply(g, draw)[0] for g in globals_])
            p_tm = self.sharpen(teacher_m, temp)
            source, intra = sdmp_weights(lam, self.static_source, self.static_intra)
            loss_s = pair_cross_entropy(torch.stack([mixed_teacher(source, p) for p in p_t]), log_p_s[clean:])  # Eq. 7
            loss_m = pair_cross_entropy(torch.stack([mixed_teacher(intra, p) for p in p_tm]), log_p_s[clean:])  # Eq. 8
            loss = loss_dino + loss_m + loss_s  # Eq. 9
            logs.update(loss_dino=loss_dino.detach(), loss_source=loss_s.detach(), loss_intra=loss_m.detach(),
                        lam=lam.mean())
        if self.training:
            self.update_center(teacher)  # the clean global views only
        return StepOutput(loss=loss, logs=logs)

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, progress: float) -> None:
        """θ_t ← m θ_t + (1 − m) θ_s for backbone and head, m by the cosine schedule."""
        head, teacher_backbone, teacher_head = self._ready()
        m = cosine_momentum(self.momentum, progress)
        momentum_update_(teacher_backbone.parameters(), model.parameters(), m)
        momentum_update_(teacher_head.parameters(), head.parameters(), m)

    def extra_repr(self) -> str:
        sdmp = f", sdmp={self.num_mixed_local} of {self.num_local} local, {self.mixing!r}" if self.sdmp else ""
        return (f"out_dim={self.out_dim}, student_temp={self.student_temp}, teacher_temp={self.warmup_teacher_temp}"
                f"->{self.teacher_temp}, momentum={self.momentum}, num_local={self.num_local}{sdmp}")
