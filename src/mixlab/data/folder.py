"""``ImageFolder``: ``<root>/<split>/<class>/<image>`` from a directory or straight from a ``.zip``.

* Classes are the sorted class-folder names, files are sorted, so labels and order are
  deterministic. Inside a zip the ``<split>`` folder may be at the top level or under one top
  directory (``cifar10/train/cat/0001.jpg``); the same holds for a directory. Files under a class
  folder may be nested; non-image files (by extension) and hidden entries are skipped.
* Decoding: JPEGs in batches with ``torchvision.io.decode_jpeg`` (a few threads), other formats with
  ``decode_image`` (PIL as a fallback), always as RGB ``uint8``.
* **Same-size images** (CIFAR-like): stacked into one ``uint8 (N, 3, H, W)`` tensor, decoded once,
  and cached as a ``.pt`` file under ``$MIXLAB_CACHE`` (default ``~/.cache/mixlab``), keyed by the
  source's absolute path, size and mtime (for a directory: every file's) and the split; written
  atomically, so the next load is a ``torch.load``.
* **Mixed sizes**: the encoded bytes are kept in memory and decoded per item (:class:`EncodedImages`,
  ``dataset.is_lazy``); use a size-fixing transform (``RandomResizedCrop``/``Resize``) before
  batching. Nothing is cached on disk then, and a corrupt file is reported when it is first read.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from .tensor_dataset import EncodedImages, ImageTensorDataset, decode_batch, quiet_decoders

__all__ = ["ImageFolder", "IMAGE_EXTENSIONS", "SourceTree", "cache_dir", "decode_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_LAYOUT = "<root>/<split>/<class>/<image> (the <split> folder at the top level or under one top directory)"
_CACHE_VERSION = 1
_CHUNK = 2048


def cache_dir() -> Path:
    """``$MIXLAB_CACHE`` if set, else ``~/.cache/mixlab``."""
    return Path(os.environ.get("MIXLAB_CACHE") or Path.home() / ".cache" / "mixlab").expanduser()


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


class SourceTree:
    """Uniform access to a directory or a zip archive (read in place, never extracted): ``files``
    and ``dirs`` as relative posix paths, ``read(rel)`` their bytes, ``name(rel)`` for messages.

    Raises:
        ValueError: ``root`` is a file but not a readable zip archive.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.is_zip = root.is_file()
        if self.is_zip:
            try:
                self._zip = zipfile.ZipFile(root)
            except (zipfile.BadZipFile, OSError) as err:
                raise ValueError(f"{root} is neither a directory nor a readable .zip archive ({err})") from None
            infos = self._zip.infolist()
            self.files = [i.filename for i in infos if not i.is_dir()]
            self.dirs = {i.filename.rstrip("/") for i in infos if i.is_dir()}
        else:
            self.files, self.dirs = [], set()
            for dirpath, dirnames, filenames in os.walk(root):
                rel = Path(dirpath).relative_to(root).as_posix()
                prefix = "" if rel == "." else rel + "/"
                self.dirs.update(prefix + d for d in dirnames)
                self.files.extend(prefix + f for f in filenames)
        for f in self.files:  # parents of files are folders even when the zip has no dir entries
            parts = f.split("/")
            self.dirs.update("/".join(parts[:k]) for k in range(1, len(parts)))

    def name(self, rel: str) -> str:
        """How a file is named in messages: ``archive.zip:train/cat/1.jpg`` or a full path."""
        return f"{self.root}:{rel}" if self.is_zip else str(self.root / rel)

    def read(self, rel: str) -> Tensor:
        if self.is_zip:
            data = self._zip.read(rel)
        else:
            data = (self.root / rel).read_bytes()
        return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)

    def fingerprint(self, split: str, files: list[str]) -> str:
        """Cache key of a directory split: its path + every file's path, size and mtime."""
        h = hashlib.sha256(f"v{_CACHE_VERSION}|dir|{self.root.resolve()}|{split}".encode())
        for rel in files:
            st = (self.root / rel).stat()
            h.update(f"|{rel}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:20]

    def close(self) -> None:
        if self.is_zip:
            self._zip.close()


def _top_level(src: SourceTree) -> list[str]:
    """Visible top-level entries (folders end in '/'), for error messages."""
    tops = {d + "/" for d in src.dirs if "/" not in d} | {f for f in src.files if "/" not in f}
    tops = sorted(t for t in tops if not _is_hidden(t.rstrip("/")))
    return tops[:12] + (["..."] if len(tops) > 12 else [])


def _resolve_split(src: SourceTree, split: str) -> str:
    """The prefix ``'<split>/'`` or ``'<top>/<split>/'`` under which the split's class folders are."""
    if split in src.dirs:
        return split + "/"
    tops = {d for d in src.dirs if "/" not in d and not _is_hidden(d)}
    top_files = [f for f in src.files if "/" not in f and not _is_hidden(f)]
    if len(tops) == 1 and not top_files:
        (top,) = tops
        if f"{top}/{split}" in src.dirs:
            return f"{top}/{split}/"
    raise ValueError(
        f"no '{split}' split folder in {src.root}: expected layout {_LAYOUT}; "
        f"found top-level entries {_top_level(src) or '(none: it is empty)'}"
    )


def _list_split(src: SourceTree, split: str) -> tuple[str, list[str], list[str], list[int]]:
    prefix = _resolve_split(src, split)
    classes = sorted(d[len(prefix):] for d in src.dirs if d.startswith(prefix) and "/" not in d[len(prefix):]
                     and not _is_hidden(d[len(prefix):]))
    if not classes:
        found = sorted(f[len(prefix):] for f in src.files if f.startswith(prefix))[:5]
        raise ValueError(f"no class folders under {src.name(prefix)}: expected layout {_LAYOUT}; found {found}")
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for rel in sorted(src.files):
        if not rel.startswith(prefix) or _is_hidden(rel) or not rel.lower().endswith(IMAGE_EXTENSIONS):
            continue
        cls, _, rest = rel[len(prefix):].partition("/")
        if rest:  # a file directly in the split folder has no class
            files.append(rel)
            labels.append(index[cls])
    counts = torch.bincount(torch.tensor(labels, dtype=torch.int64), minlength=len(classes))
    empty = [classes[i] for i in (counts == 0).nonzero().flatten().tolist()]
    if empty:
        raise ValueError(
            f"class folder(s) {empty[:5]} under {src.name(prefix)} contain no images "
            f"(extensions {', '.join(IMAGE_EXTENSIONS)}); expected layout {_LAYOUT}"
        )
    return prefix, classes, files, labels


def decode_images(src: SourceTree, files: list[str]) -> Tensor | EncodedImages:
    """The ``files`` of ``src`` decoded to RGB and stacked into ``uint8 (N, 3, H, W)`` if all share
    one size (checked on an evenly spaced probe first), else kept encoded (:class:`EncodedImages`).

    Raises:
        ValueError: an image cannot be decoded (the message names the file).
    """
    names = [src.name(f) for f in files]
    data = [src.read(f) for f in files]
    n = len(data)
    with quiet_decoders():  # in this thread: warning filters are process-global
        probe_idx = sorted(set(torch.linspace(0, n - 1, min(n, 64)).round().long().tolist()))
        probe = decode_batch([data[i] for i in probe_idx], [names[i] for i in probe_idx])
        shape = probe[0].shape
        if any(p.shape != shape for p in probe):
            return EncodedImages(data, names)
        out = torch.empty((n, *shape), dtype=torch.uint8)

        def work(start: int) -> bool:
            imgs = decode_batch(data[start:start + _CHUNK], names[start:start + _CHUNK])
            if any(im.shape != shape for im in imgs):
                return False
            torch.stack(imgs, out=out[start:start + len(imgs)])
            return True

        threads = max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(threads) as pool:  # the decoders release the GIL
            uniform = all(list(pool.map(work, range(0, n, _CHUNK))))
    return out if uniform else EncodedImages(data, names)


class ImageFolder(ImageTensorDataset):
    """An ImageFolder split read from a directory or a ``.zip`` (no extraction).

    Attributes beyond :class:`ImageTensorDataset`: ``root``, ``split``, ``files`` (relative paths,
    in item order). ``mean``/``std`` are computed from the images on first access.

    Args:
        root: a directory or a ``.zip`` holding ``<split>/<class>/<image>``, possibly under one top
            directory.
        split: name of the split folder (``"train"``, ``"val"``, ``"test"``, ...).
        transform: per-item transform (``transforms.v2`` on ``uint8`` CHW).
        cache: read/write the decoded tensor cache (same-size images only).

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``root`` is not a directory or zip, the layout is not ``<split>/<class>/<image>``
            (the message shows the top-level entries found), a class folder is empty, or an image
            cannot be decoded (the message names the file, ``archive.zip:train/cat/0001.jpg``).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transform=None, cache: bool = True) -> None:
        root = Path(root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"ImageFolder root {root} does not exist (expected a directory or a .zip)")
        if not isinstance(split, str) or not split or "/" in split:
            raise ValueError(f"split must be a folder name such as 'train' or 'test', got {split!r}")
        blob, cache_file = None, None
        if cache and root.is_file():  # a zip: the key needs no listing, so a hit skips opening it
            st = root.stat()
            key = f"v{_CACHE_VERSION}|zip|{root.resolve()}|{st.st_size}|{st.st_mtime_ns}|{split}"
            cache_file = cache_dir() / f"imagefolder-{root.stem}-{split}-{_digest(key)}.pt"
            blob = _load_cache(cache_file)
        if blob is None:
            src = SourceTree(root)
            try:
                _, classes, files, labels = _list_split(src, split)
                if cache and not src.is_zip:
                    cache_file = cache_dir() / f"imagefolder-{root.name}-{split}-{src.fingerprint(split, files)}.pt"
                    blob = _load_cache(cache_file)
                if blob is None:
                    images = decode_images(src, files)
                    blob = {"images": images, "labels": torch.tensor(labels, dtype=torch.int64),
                            "classes": classes, "files": files}
                    if cache and isinstance(images, Tensor):
                        _save_cache(cache_file, blob)
            finally:
                src.close()
        super().__init__(blob["images"], blob["labels"], blob["classes"], transform)
        self.root, self.split, self.files = root, split, list(blob["files"])


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _load_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True)
        if {"images", "labels", "classes", "files"} <= blob.keys() and len(blob["images"]) == len(blob["labels"]):
            return blob
        raise ValueError("missing or inconsistent entries")
    except Exception as err:  # unreadable/stale cache: rebuild it
        warnings.warn(f"ignoring unreadable mixlab cache {path}: {err}", stacklevel=3)
    return None


def _save_cache(path: Path, blob: dict) -> None:
    """Write atomically (temp file in the same folder + ``os.replace``); failures only warn."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(blob, f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as err:
        warnings.warn(f"could not write mixlab cache {path}: {err}", stacklevel=3)
