"""PuzzleMix's graph cut: gco-wrapper (the C++ α-β swap PuzzleMix uses) against a batched torch solver.

The question the PuzzleMix issue asks: solve the per-image labelling of Eq. 3-4 with gco-wrapper
(one C++ call per image, on the CPU) or with a vectorised torch solver (the whole batch at once, on
the images' device)? The torch candidate here is min-sum loopy belief propagation on the 4-connected
block grid (parallel message updates with damping 0.5, labels from the beliefs' argmin), the
standard batched solver for small grid MRFs; it is written in this script only, as the contender.

Both solve the same energies: :func:`mixlab.methods.puzzlemix.puzzle_energy` of a batch of the
synthetic set, with the saliency of a ``resnet_small`` (He init) and the defaults of the CIFAR
command (3 labels, β 1.2, γ 0.5, η 0.2), for n = 2, 4, 8, 16 blocks a side. Printed per n: ms per
batch for gco and for BP at n, 2n and 4n iterations, and how BP's energy compares with gco's
(images where it is higher / lower by more than 1e-4 relative, and the worst relative excess).

    python benchmarks/puzzlemix_graphcut.py                    # batch 64 (cifar10-quick's), CPU
    python benchmarks/puzzlemix_graphcut.py --batch-size 128 --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch

from mixlab import registry
from mixlab.core import pair_index, sample_lambda
from mixlab.data import normalize_on_device
from mixlab.methods.puzzlemix import GridEnergy, input_saliency, puzzle_energy, solve_graph_cut


def belief_propagation(energy: GridEnergy, iterations: int, damping: float = 0.5) -> torch.Tensor:
    """Min-sum loopy BP on each image's n × n grid, all images at once; (B, n, n) labels."""
    u, dist = energy.unary, energy.distance()
    b, n, _, m = u.shape
    zero = lambda *s: u.new_zeros(*s)  # noqa: E731
    # messages arriving at each block from its upper / lower / left / right neighbour (0 at the borders)
    up, down, left, right = (zero(b, n, n, m) for _ in range(4))
    wv, wh = energy.vertical[..., None, None], energy.horizontal[..., None, None]  # (B, n-1, n, 1, 1)

    def send(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        msg = (h.unsqueeze(-1) + w * dist).amin(dim=-2)  # min over the sender's label
        return msg - msg.amin(dim=-1, keepdim=True)

    for _ in range(iterations):
        total = u + up + down + left + right
        new_up = torch.cat([zero(b, 1, n, m), send((total - down)[:, :-1], wv)], dim=1)
        new_down = torch.cat([send((total - up)[:, 1:], wv), zero(b, 1, n, m)], dim=1)
        new_left = torch.cat([zero(b, n, 1, m), send((total - right)[:, :, :-1], wh)], dim=2)
        new_right = torch.cat([send((total - left)[:, :, 1:], wh), zero(b, n, 1, m)], dim=2)
        up, down, left, right = (damping * old + (1 - damping) * new for old, new in
                                 ((up, new_up), (down, new_down), (left, new_left), (right, new_right)))
    return (u + up + down + left + right).argmin(dim=-1)


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if out.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return out, best * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    data = registry.build_dataset("synthetic", "train", num_per_class=max(args.batch_size // 10 + 1, 1), seed=0)
    x = normalize_on_device(torch.stack([data[i][0] for i in range(args.batch_size)]), data.mean, data.std).to(device)
    y = torch.tensor([data[i][1] for i in range(args.batch_size)], device=device)
    model = registry.build_model("resnet_small", 10).to(device)
    saliency, _ = input_saliency(model, x, y, 10)
    g = torch.Generator().manual_seed(0)
    print(f"batch {args.batch_size} x 32x32, {device}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"best of {args.repeats}")
    print(f"{'n':>3} {'gco ms':>8} {'BP iters':>9} {'BP ms':>8} {'BP/gco':>7} {'BP higher':>10} {'BP lower':>9} "
          f"{'worst excess':>13}")
    for n in (2, 4, 8, 16):
        lam = sample_lambda(args.batch_size, 1.0, generator=g, device=device)
        index = pair_index(args.batch_size, "random", g, device=device)
        energy = puzzle_energy(x, saliency, index, lam, n)
        cut, t_gco = timed(lambda: solve_graph_cut(energy), args.repeats)
        e_gco = energy.energy(cut)
        for iters in (n, 2 * n, 4 * n):
            bp, t_bp = timed(lambda: belief_propagation(energy, iters), args.repeats)
            rel = (energy.energy(bp) - e_gco) / e_gco.abs()
            print(f"{n:>3} {t_gco:8.1f} {iters:>9} {t_bp:8.1f} {t_bp / t_gco:7.2f} {int((rel > 1e-4).sum()):>10} "
                  f"{int((rel < -1e-4).sum()):>9} {float(rel.max()):13.2e}")


if __name__ == "__main__":
    main()
