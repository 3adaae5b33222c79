"""``mixlab gallery``: every method's output on the same batch, one PNG each, and an index page.

    entries = build_gallery("docs/gallery", methods=["mixup", "cutmix"])
    print([entry.path.name for entry in entries])          # ['mixup.png', 'cutmix.png']

Each picture is :func:`~mixlab.engine.show.show_method`'s (``mixlab show``): the inputs, their
partners, the mixing masks where the method has them, and the mixed images with their top-2 label
weights and λ; every method draws the same images (the same ``seed``) with its paper defaults and a
freshly initialised model. ``index.md`` lists them as a markdown page (the documentation site's
gallery).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mixlab import registry
from mixlab.engine.show import show_method

__all__ = ["GalleryEntry", "build_gallery", "gallery_methods"]


#: pictures of self-supervised methods whose default views do not mix: name -> (method, overrides)
MIXED_VIEWS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mocov3+sdmp": ("mocov3", ("method.params.sdmp=true",)),
    "dino+sdmp": ("dino", ("method.params.sdmp=true",)),
    "mocov2+cropmix": ("mocov2", ("method.params.views=cropmix",)),
    "mocov2+scalemix": ("mocov2", ("method.params.views=scalemix",)),
    "mae+cropmix": ("mae", ("method.params.input=cropmix",)),
}


@dataclass(frozen=True)
class GalleryEntry:
    """One picture of the gallery: its name, the PNG written and what it shows (the λ drawn)."""

    name: str
    path: Path
    what: str


def gallery_methods() -> list[str]:
    """The gallery's names in order: every registered method (``vanilla`` does not mix), the
    self-supervised ones whose default views do not mix replaced by their mixed views
    (:data:`MIXED_VIEWS`, at the end)."""
    drawn_as_views = {method for method, _ in MIXED_VIEWS.values()}
    return [name for name in registry.METHODS if name != "vanilla" and name not in drawn_as_views] + list(MIXED_VIEWS)


def build_gallery(out: str | Path, methods: Sequence[str] | None = None, *, n: int = 8, seed: int = 0,
                  overrides: Sequence[str] = ()) -> list[GalleryEntry]:
    """Draw ``methods`` (default :func:`gallery_methods`) on the same ``n`` images into ``out``.

    Args:
        out: the folder to write ``<method>.png`` and ``index.md`` into (created).
        methods: registered method names or keys of :data:`MIXED_VIEWS`.
        n: images in the batch, 2 to 32.
        seed: seed of the images drawn and of every method's mixing.
        overrides: ``key=value`` config overrides given to every method (``data.image_size=64``).

    Returns:
        One :class:`GalleryEntry` per method, in the order given.

    Raises:
        ValueError: an unknown method name (all names are checked before anything is drawn), an
            empty ``methods``, or ``n`` out of range.
    """
    names = gallery_methods() if methods is None else list(methods)
    if not names:
        raise ValueError("methods must name at least one method, got an empty list")
    unknown = [name for name in names if name not in registry.METHODS and name not in MIXED_VIEWS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; valid names: "
                         f"{', '.join([*registry.METHODS, *MIXED_VIEWS])}")
    if not 2 <= n <= 32:
        raise ValueError(f"n must be in [2, 32] (mixing pairs images; one column per image), got {n}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for name in names:
        method, settings = MIXED_VIEWS.get(name, (name, ()))
        path, what = show_method(method, n=n, seed=seed, out=out / f"{name}.png", overrides=[*settings, *overrides])
        _shrink_png(path)
        entries.append(GalleryEntry(name, path, what))
    (out / "index.md").write_text(_index(entries, n, seed, overrides))
    return entries


def _shrink_png(path: Path) -> None:
    """Re-encode the PNG with a 256-colour palette: a third of the size, no visible change on these
    flat synthetic images and text."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def _index(entries: Sequence[GalleryEntry], n: int, seed: int, overrides: Sequence[str]) -> str:
    flags = "".join(f" --set {o}" for o in overrides)
    lines = ["# Gallery", "",
             f"Every method on the same {n} synthetic images (seed {seed}), each with its paper defaults and a "
             "freshly initialised model, drawn by `mixlab show`; the self-supervised methods with the setting that "
             "mixes their views (`mocov3+sdmp`: MoCo v3 with `sdmp=true`). Rows: the inputs, their partners, the mask "
             "(per-pixel weight of the own image, black 0 to white 1; a flat tile at λ for global mixes such as "
             "Mixup), the mixed images with their top-2 label weights and λ. Regenerate with",
             "", "```bash", f"mixlab gallery --out docs/gallery --n {n} --seed {seed}{flags}", "```", ""]
    for e in entries:
        lines += [f"## {e.name}", "", f"{e.what}.", "", f"![{e.name}]({e.path.name})", ""]
    return "\n".join(lines)
