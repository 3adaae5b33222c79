"""MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision
Transformers"), with SDMP (Ren et al. 2022, §3.3 case 1, Eq. 3-5) as an option.

Two BYOL views x1, x2 of each image. The base encoder f_q = backbone → projector g → predictor
h; the momentum encoder f_k = a copy of backbone → projector, updated as
``θ_k ← m θ_k + (1 − m) θ_q`` with m rising from m_0 to 1 by a cosine. With
``ctr(q, k) = 2τ · CE(q̂ k̂ᵀ / τ, arange(n))`` (L2-normalised, the keys of every process as
negatives), the loss is symmetric::

    L_MoCo = ctr(q1, k2) + ctr(q2, k1)

SDMP, replace version (the default, Table 9): view 2's query is replaced by its mix
``x2^m = mix(x2, flip(x2), λ)`` (:class:`~mixlab.ssl.sdmp.SDMPMixing`), the keys add the same mix
of view 1, ``k1^m = f_k(mix(x1, flip(x1), λ))``, and::

    L = ctr(q1, k2) + ½ [ L^s(q2^m; k1, λ)  +  L^m(q2^m; k1^m, λᶜ) ]          (Eq. 3, 4, 5)

where L^s and L^m are 2τ × the soft-positive InfoNCE of :func:`~mixlab.ssl.sdmp.soft_contrastive_loss`
with the source and intra-batch teachers. Which view is mixed is drawn per step (the authors'
code swaps the views with probability ½); the ½ is their code's weighting, which makes the loss
equal to L_MoCo when nothing is mixed (λ = 1). The extra version keeps both clean queries and
adds the mixed one: ``L_MoCo + ½ [L^s + L^m]`` (one more encoder pass; the paper trains it for ⅔
of the epochs to compare at equal cost).

Defaults, and where they come from: projector 2 layers for CNNs (MoCo v3's ResNet; 3 for ViTs,
``proj_layers=3``), predictor 2 layers, hidden 4096, output 256, BatchNorm in the MLPs with an
affine-free BN after the projector's last layer; τ = 0.2 (MoCo v3's ViT setting; its ResNet-50
uses 1.0); m_0 = 0.99 (MoCo v3). SDMP: λ ~ Beta(1, 1) per sample, the operation uniform over
{Mixup, CutMix, ResizeMix} (the paper), the paper's soft-target cross-entropy (``loss_form="code"``
is the authors' ``−log(λ p_i + (1 − λ) p_partner)``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from mixlab.core.checks import check_bool, check_choice
from mixlab.core.momentum import cosine_momentum, frozen_copy, momentum_update_
from mixlab.core.random import rand
from mixlab.methods.base import StepOutput
from mixlab.ssl.base import SelfSupervised, embed, feature_dim, gather_batch, positive_int
from mixlab.ssl.sdmp import LOSS_FORMS, SDMP_OPS, SDMPMixing, sdmp_weights, soft_contrastive_loss
from mixlab.transforms.views import TwoViews

__all__ = ["MoCoV3", "mlp", "SDMP_VERSIONS"]

SDMP_VERSIONS = ("replace", "extra")


def mlp(num_layers: int, in_dim: int, hidden_dim: int, out_dim: int, last_bn: bool = True) -> nn.Sequential:
    """MoCo v3's MLP: Linear (no bias) → BN → ReLU, ..., Linear, then an affine-free BN if ``last_bn``."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d_in = in_dim if i == 0 else hidden_dim
        d_out = out_dim if i == num_layers - 1 else hidden_dim
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


class MoCoV3(SelfSupervised):
    """MoCo v3 pre-training of the model's backbone, optionally with SDMP.

    Args:
        dim: output width of projector and predictor (256).
        mlp_dim: hidden width of the MLPs (4096).
        proj_layers: projector depth (2 for CNNs, MoCo v3 uses 3 for ViTs).
        temperature: τ of the InfoNCE, > 0 (0.2).
        momentum: m_0 of the momentum encoder, in [0, 1] (0.99), rising to 1 by a cosine.
        sdmp: mix with SDMP (default False).
        sdmp_version: ``"replace"`` (default) or ``"extra"`` (Table 9).
        ops: SDMP's mixing operations (Table 8), any of ``("mixup", "cutmix", "resizemix")``.
        per_sample: SDMP's λ per image (default) or per batch (Table 7).
        static_source, static_intra: Table 6's static λ in the source / intra-batch loss.
        loss_form: ``"soft"`` (the paper's, default) or ``"code"`` (the authors' code).
        mix_alpha: λ ~ Beta(α, α) for Mixup and CutMix (1.0).
        image_size: side of the views (default: the training images').

    Example:
        >>> method = MoCoV3(sdmp=True, mlp_dim=512, dim=128)
        >>> method.setup(model, torch.Generator().manual_seed(0))
        >>> loss = method.training_step(model, ([view1, view2], labels), progress=0.0).loss
    """

    name = "mocov3"

    def __init__(self, dim: int = 256, mlp_dim: int = 4096, proj_layers: int = 2, temperature: float = 0.2,
                 momentum: float = 0.99, sdmp: bool = False, sdmp_version: str = "replace",
                 ops: Sequence[str] = SDMP_OPS, per_sample: bool = True, static_source: bool = False,
                 static_intra: bool = False, loss_form: str = "soft", mix_alpha: float = 1.0,
                 image_size: int | None = None) -> None:
        super().__init__(image_size)
        self.dim = positive_int(dim, "dim")
        self.mlp_dim = positive_int(mlp_dim, "mlp_dim")
        self.proj_layers = positive_int(proj_layers, "proj_layers")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.sdmp = check_bool(sdmp, "sdmp")
        self.sdmp_version = check_choice(sdmp_version, "sdmp_version", SDMP_VERSIONS)
        self.static_source = check_bool(static_source, "static_source")
        self.static_intra = check_bool(static_intra, "static_intra")
        self.loss_form = check_choice(loss_form, "loss_form", LOSS_FORMS)
        self.mixing = SDMPMixing(ops, mix_alpha, per_sample)
        self.predictor = mlp(2, self.dim, self.mlp_dim, self.dim, last_bn=False)
        self.projector: nn.Module | None = None  # sized by the backbone in setup()
        self.momentum_encoder: nn.Module | None = None
        self.momentum_projector: nn.Module | None = None

    # ------------------------------------------------------------------ setup
    def views(self, image_size: int) -> Callable:
        """BYOL's two asymmetric views (the paper's §4.1)."""
        return TwoViews(image_size)

    def setup(self, model: nn.Module, generator: torch.Generator | None = None) -> None:
        """Build the projector for the backbone's width, and the momentum copies, on its device."""
        super().setup(model, generator)
        self.mixing.generator = generator
        device = next(model.parameters()).device
        if self.projector is None:
            self.projector = mlp(self.proj_layers, feature_dim(model), self.mlp_dim, self.dim).to(device)
            self.predictor.to(device)
        self.momentum_encoder = frozen_copy(model)
        self.momentum_projector = frozen_copy(self.projector)

    def _ready(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        if self.projector is None or self.momentum_encoder is None or self.momentum_projector is None:
            raise RuntimeError("MoCoV3.setup(model) must be called before training (the trainer does it)")
        return self.projector, self.momentum_encoder, self.momentum_projector

    def param_groups(self, base_lr: float) -> list[dict]:
        """Projector and predictor, with the backbone's lr and schedule."""
        projector, _, _ = self._ready()
        return [{"params": list(projector.parameters()) + list(self.predictor.parameters())}]

    # ------------------------------------------------------------------ the loss
    def query(self, model: nn.Module, images: Tensor) -> Tensor:
        """q = h(g(f_q(x)))."""
        projector, _, _ = self._ready()
        return self.predictor(projector(embed(model, images)))

    @torch.no_grad()
    def key(self, images: Tensor) -> Tensor:
        """k = g_k(f_k(x)), no gradient."""
        _, encoder, projector = self._ready()
        return projector(embed(encoder, images))

    def contrastive(self, q: Tensor, k: Tensor, weights: Tensor | None = None) -> Tensor:
        """``2τ · soft InfoNCE(q, k, W)``; the keys of every process are the negatives; W = I by default."""
        keys, offset = gather_batch(k)
        n = q.shape[0]
        full = torch.zeros(n, keys.shape[0], device=q.device)
        block = weights if weights is not None else torch.eye(n, device=q.device)
        full[:, offset:offset + n] = block.float()
        form = self.loss_form if weights is not None else "soft"
        return 2 * self.temperature * soft_contrastive_loss(q, keys, full, self.temperature, form)

    def training_step(self, model: nn.Module, batch: Any, progress: float) -> StepOutput:
        views = self.unpack(batch)
        if len(views) != 2:
            raise ValueError(f"MoCo v3 takes two views per image, got {len(views)}")
        x1, x2 = views
        if not (self.sdmp and self.training):
            q1, q2 = self.query(model, x1), self.query(model, x2)
            k1, k2 = self.key(x1), self.key(x2)
            loss = self.contrastive(q1, k2) + self.contrastive(q2, k1)
            return StepOutput(loss=loss)
        if float(rand((1,), self.generator)) < 0.5:  # which view is mixed
            x1, x2 = x2, x1
        draw = self.mixing.draw(x2)
        x2m, lam = self.mixing.apply(x2, draw)
        x1m, _ = self.mixing.apply(x1, draw)
        source, intra = sdmp_weights(lam, self.static_source, self.static_intra)
        q1, q2m = self.query(model, x1), self.query(model, x2m)
        k1, k2, k1m = self.key(x1), self.key(x2), self.key(x1m)
        plain = self.contrastive(q1, k2)
        if self.sdmp_version == "extra":  # the clean second query stays; the mix is a third view
            plain = plain + self.contrastive(self.query(model, x2), k1)
        loss_s = self.contrastive(q2m, k1, source)  # Eq. 3
        loss_m = self.contrastive(q2m, k1m, intra)  # Eq. 4
        loss = plain + 0.5 * (loss_s + loss_m)  # Eq. 5
        return StepOutput(loss=loss, logs={"loss_moco": plain.detach(), "loss_source": loss_s.detach(),
                                           "loss_intra": loss_m.detach(), "lam": lam.mean()})

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, progress: float) -> None:
        """θ_k ← m θ_k + (1 − m) θ_q for backbone and projector, m by the cosine schedule."""
        projector, encoder, momentum_projector = self._ready()
        m = cosine_momentum(self.momentum, progress)
        momentum_update_(encoder.parameters(), model.parameters(), m)
        momentum_update_(momentum_projector.parameters(), projector.parameters(), m)

    def extra_repr(self) -> str:
        sdmp = f", sdmp={self.sdmp_version}, {self.mixing!r}" if self.sdmp else ""
        return f"dim={self.dim}, mlp_dim={self.mlp_dim}, temperature={self.temperature}, momentum={self.momentum}{sdmp}"
