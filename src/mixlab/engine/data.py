"""The data pipeline of every program of the engine: splits, transforms, loaders, seeds, normalisation.

    from mixlab.engine.data import datasets, default_transforms, normalizer
    train_set, test_set = datasets(cfg)                   # as `mixlab train` builds them
    _, test_transform = default_transforms(train_set, cfg)
    preprocess = normalizer(train_set.mean, train_set.std, channels_last=False)  # uint8 -> float, on the device

Used by the training loop (:mod:`mixlab.engine.loop`), ``mixlab eval`` / ``probe`` / ``finetune``,
the benchmark's gallery and ``mixlab show``, so that all of them see the images as training did.

Randomness: the data order is a function of ``(seed, epoch)`` (:class:`EpochSampler`) and each
image's augmentation of ``(seed, epoch, index)`` (:class:`SeededItems`), so a run does not depend
on the number of loader workers and a resumed run continues bit for bit; the mixing and loader
generators of each process come from :func:`rank_generators`.

Augmentation on the device (``data.device_augment``; ``docs/guide/device-augment.md``): the loader
only collates the uint8 images and the method's batched twin of its transform
(``Method.device_transform``) runs on the whole batch on the training device, drawing from the
process's ``augment`` generator, which checkpoints save (:func:`device_augmenter`). A lazily decoded
folder's images are decoded in the workers and zero-padded to the batch's largest, with each image's
size (:func:`pad_collate`); on CUDA, or without workers, the loader passes the encoded bytes and the
main process decodes each batch (on the GPU with nvJPEG; :class:`EncodedItems`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from mixlab import registry
from mixlab.engine.config import TrainConfig
from mixlab.engine.distributed import DistInfo, on_main

__all__ = ["mix_seed", "rank_generators", "EpochSampler", "SeededItems", "build_split", "train_split", "datasets",
           "align_test_split", "default_transforms", "normalizer", "to_device", "test_loader", "figure_images",
           "RunData", "run_data", "load_datasets", "wants_device_augment", "device_augmenter", "pad_images",
           "pad_collate", "EncodedItems", "encoded_collate"]


# ------------------------------------------------------------------------------ seeds
def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (cheap enough to call once per image)."""
    h = 0x9E3779B9
    for p in parts:
        h = (h * 6364136223846793005 + int(p) + 1442695040888963407) % (1 << 63)
    return h


def rank_generators(seed: int, rank: int, augment: bool = False) -> dict[str, torch.Generator]:
    """The engine's generators of one process: ``method`` (mixing: boxes, λ, pairings),
    ``loader`` (worker seeds) and, with ``augment``, ``augment`` (the batched augmentation on the
    device), seeded from ``(seed, rank)`` so that data-parallel ranks mix their batches
    differently. (The data order and each image's per-image augmentation are seeded from ``seed``
    alone: ranks share the permutation and own disjoint images of it.)"""
    gens = {"method": torch.Generator().manual_seed(mix_seed(seed, rank, 1)),
            "loader": torch.Generator().manual_seed(mix_seed(seed, rank, 2))}
    if augment:
        gens["augment"] = torch.Generator().manual_seed(mix_seed(seed, rank, 5))
    return gens


class EpochSampler(Sampler):
    """Shuffled indices, a deterministic function of ``(seed, epoch)``; yields ``(epoch, index)``
    so that :class:`SeededItems` can seed each image's augmentation. Call ``set_epoch`` first.

    With ``world_size > 1`` (``DistributedSampler``'s semantics): every rank draws the same
    permutation, pads it to a multiple of ``world_size`` by repeating its start, and takes
    positions ``rank, rank + world_size, ...``; the shards are disjoint apart from the padding,
    and all ranks take the same number of steps.

    ``set_epoch(epoch, start)`` skips the first ``start`` positions of this rank's share (those a
    mid-epoch checkpoint had consumed): the epoch goes on with the same permutation, and the
    skipped images are never loaded.
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True, *, rank: int = 0,
                 world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"EpochSampler: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.num_samples, self.seed, self.shuffle, self.epoch, self.start = num_samples, seed, shuffle, 0, 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch to draw, and the positions of this rank's share to skip (0: the whole share).

        Raises:
            ValueError: ``start`` outside ``[0, share]``.
        """
        share = self.share
        if not isinstance(start, int) or not 0 <= start <= share:
            raise ValueError(f"EpochSampler.set_epoch: start must be an integer in [0, {share}] (this rank's share "
                             f"of the epoch), got {start!r}")
        self.epoch, self.start = epoch, start

    @property
    def share(self) -> int:
        """This rank's positions in a whole epoch, padding included."""
        return -(-self.num_samples // self.world_size)  # ceil

    def __len__(self) -> int:
        return self.share - self.start  # what an iteration yields

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_samples, generator=g) if self.shuffle else torch.arange(self.num_samples)
        if self.world_size > 1:
            total = self.share * self.world_size
            order = order.repeat(-(-total // max(1, self.num_samples)))[:total]  # pad with the permutation's start
            order = order[self.rank::self.world_size]
        return ((self.epoch, i) for i in order[self.start:].tolist())


class SeededItems(Dataset):
    """``dataset[index]`` with the global torch/python RNGs seeded from ``(seed, epoch, index)``.

    Per-image transforms (``torchvision.transforms.v2``) draw from the global RNG; seeding it per
    item makes the augmentation independent of the worker that loads the item. In the main
    process (``num_workers=0``) the global states are restored afterwards.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        seed = mix_seed(self.seed, epoch, index)
        if torch.utils.data.get_worker_info() is not None:
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            return self.dataset[index]
        torch_state, py_state = torch.get_rng_state(), random.getstate()
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(torch_state)
            random.setstate(py_state)


# ------------------------------------------------------------------------------ splits
def build_split(cfg: TrainConfig, split: str):
    """One split of the run's dataset, untransformed (sizes and seed for the synthetic set; other
    datasets take only a root)."""
    d = cfg.data
    per_class = d.num_per_class if split == "train" else d.test_per_class
    kwargs = {"num_per_class": per_class, "image_size": d.image_size, "seed": cfg.run.seed} \
        if d.name == "synthetic" else {}
    if d.download:
        kwargs["download"] = True
    return registry.build_dataset(d.name, split, root=d.root, **kwargs)


def train_split(cfg: TrainConfig):
    """The run's training split: the class-balanced subset of ``data.train_per_class`` images per
    class when the config has one (no transform)."""
    return _balanced(build_split(cfg, "train"), cfg)


def _balanced(train_set, cfg: TrainConfig):
    if cfg.data.train_per_class is None:
        return train_set
    from mixlab.data import class_balanced_subset

    return train_set.subset(class_balanced_subset(train_set.labels, cfg.data.train_per_class, seed=cfg.run.seed,
                                                  classes=train_set.classes))


def align_test_split(train_set, test_set, cfg: TrainConfig):
    """``test_set`` labelled with the train split's class-to-index map, the model's outputs (an
    ImageFolder's test split may lack some of the train split's classes: its own sorted folder
    names would index them otherwise, shifted).

    Raises:
        ValueError: the test split has a class the train split lacks (the model has no output for it).
    """
    try:
        return test_set.with_classes(train_set.classes)
    except ValueError:
        d = cfg.data
        extra = [c for c in test_set.classes if c not in set(train_set.classes)]
        raise ValueError(f"the test split of dataset {d.name!r} (root {d.root}) has class(es) "
                         f"{', '.join(map(repr, extra[:12]))} that its train split lacks, so the model would have no "
                         f"output for them: give each test class training images (a train/<class> folder of the same "
                         f"name) or remove it from the test split") from None


def datasets(cfg: TrainConfig, world_size: int = 1):
    """The train split (its class-balanced subset, if asked) and the test split aligned to it.

    Raises:
        ValueError: an empty split, a test class the train split lacks, or fewer training images
            (per process) than ``data.batch_size``.
    """
    d = cfg.data
    train_set = build_split(cfg, "train")
    test_set = align_test_split(train_set, build_split(cfg, "test"), cfg)
    train_set = _balanced(train_set, cfg)
    for split, ds in (("train", train_set), ("test", test_set)):
        if len(ds) == 0:
            raise ValueError(f"the {split} split of dataset {d.name!r} (root {d.root}) is empty")
    if world_size == 1 and len(train_set) < d.batch_size:
        raise ValueError(f"data.batch_size={d.batch_size} is larger than the training set ({len(train_set)} images); "
                         f"lower --batch-size")
    share = -(-len(train_set) // world_size)
    if world_size > 1 and share < d.batch_size:
        raise ValueError(f"data.batch_size={d.batch_size} (per process) is larger than the {share} training images "
                         f"each of the {world_size} processes gets ({len(train_set)} in all); lower --batch-size")
    return train_set, test_set


# ------------------------------------------------------------------------------ transforms, normalisation
def default_transforms(train_set, cfg: TrainConfig) -> tuple[Callable | None, Callable | None]:
    """Default per-image (train, test) transforms on uint8 CHW images, uint8 out (normalised on
    the device), as ``data.augment`` says (:data:`mixlab.engine.config.AUGMENTS`). Images of mixed
    sizes (a lazy folder) are cropped to ``data.image_size``."""
    from torchvision.transforms import v2

    from mixlab.data import cifar_train_transform

    augment = cfg.data.augment
    flip = augment != "none"
    if train_set.is_lazy:
        size = cfg.data.image_size
        train = v2.RandomResizedCrop(size) if flip else v2.Compose([v2.Resize(size), v2.CenterCrop(size)])
        return (v2.Compose([train, v2.RandomHorizontalFlip()]) if flip else train,
                v2.Compose([v2.Resize(round(size * 8 / 7)), v2.CenterCrop(size)]))
    size = train_set.images.shape[-1]
    if augment == "rrc-flip":  # the image's own size: the test images are used as they are
        crop = v2.RandomResizedCrop(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        return v2.Compose([crop, v2.RandomHorizontalFlip()]), None
    padding_mode = "reflect" if augment == "crop-flip-reflect" else "constant"
    return (cifar_train_transform(size=size, padding=max(1, size // 8), normalize=False, padding_mode=padding_mode)
            if flip else None), None


def normalizer(mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool) -> Callable[[Tensor], Tensor]:
    """uint8 (B, C, H, W) on the device -> normalised float32 (``normalize_on_device``, whose
    per-channel tensors are made once per device); float batches pass unchanged."""
    from mixlab.data import normalize_on_device

    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def preprocess(x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = normalize_on_device(x, mean, std)  # (B, C, H, W) float32
        return x.contiguous(memory_format=memory_format)

    return preprocess


def wants_device_augment(cfg: TrainConfig, device: torch.device) -> bool:
    """``data.device_augment``, ``null`` resolved: true on CUDA, false elsewhere."""
    return cfg.data.device_augment if cfg.data.device_augment is not None else device.type == "cuda"


def device_augmenter(pipeline: Callable, generator: torch.Generator, mean: tuple[float, ...],
                     std: tuple[float, ...], channels_last: bool) -> Callable[..., Any]:
    """``augment(images, sizes=None)``: a uint8 (B, C, H, W) batch on the device through the
    batched ``pipeline`` (:func:`mixlab.transforms.device.batched_pipeline`'s, drawing from
    ``generator``), each view normalised as :func:`normalizer` does: a tensor, or a list of views.
    ``sizes`` (B, 2): each image's (H, W) in a zero-padded batch (:func:`pad_collate`)."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    stats: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def normalise(x: Tensor) -> Tensor:  # float [0, 1] -> (x - mean) / std
        if x.device not in stats:
            m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
            inv = 1.0 / torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
            stats[x.device] = (inv.to(x.device), (-m * inv).to(x.device))
        scale, shift = stats[x.device]
        return torch.addcmul(shift, x, scale).contiguous(memory_format=memory_format)

    def augment(images: Tensor, sizes: Tensor | None = None) -> Any:
        out = pipeline(images, generator, sizes)
        return [normalise(v) for v in out] if isinstance(out, list) else normalise(out)

    return augment


def pad_images(images: list[Tensor]) -> tuple[Tensor, Tensor]:
    """uint8 (C, H_i, W_i) images of several sizes as one batch on their device: ``(images,
    sizes)``, the images zero-padded at the bottom and right to the largest (B, C, H, W),
    ``sizes`` (B, 2) int64 (on the CPU) each image's (H_i, W_i)."""
    sizes = torch.tensor([img.shape[-2:] for img in images], dtype=torch.int64)
    h, w = (int(v) for v in sizes.amax(dim=0))
    out = torch.zeros(len(images), images[0].shape[0], h, w, dtype=torch.uint8, device=images[0].device)
    for i, img in enumerate(images):
        out[i, :, :img.shape[-2], :img.shape[-1]] = img
    return out, sizes


def pad_collate(items: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Collate decoded uint8 (C, H_i, W_i) images of several sizes: ``(images, sizes, labels)``
    (:func:`pad_images`)."""
    images, sizes = pad_images([torch.as_tensor(img) for img, _ in items])
    return images, sizes, torch.tensor([label for _, label in items], dtype=torch.int64)


class EncodedItems(Dataset):
    """A lazily decoded dataset's items as ``(encoded bytes, label, path)``, decoded later in batches
    (:func:`~mixlab.data.tensor_dataset.decode_rgb_batch`, on the GPU with nvJPEG)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int, str]:
        images = self.dataset.images
        return images.data[i], int(self.dataset.labels[i]), images.names[i]


def encoded_collate(items: list[tuple[Tensor, int, str]]) -> tuple[list[Tensor], Tensor, list[str]]:
    """``(list of encoded bytes, labels, paths)``: a batch of :class:`EncodedItems`."""
    return [d for d, _, _ in items], torch.tensor([y for _, y, _ in items], dtype=torch.int64), [n for *_, n in items]


def to_device(batch: Any, device: torch.device, preprocess: Callable[[Tensor], Tensor]) -> Any:
    """Move a (nested: tuples, lists, dicts) batch to the device without waiting for the copy; 4-D
    image tensors go through ``preprocess``."""
    if isinstance(batch, Tensor):
        batch = batch.to(device, non_blocking=True)
        return preprocess(batch) if batch.ndim == 4 else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device, preprocess) for b in batch)
    if isinstance(batch, dict):  # a detection target: its tensors (boxes, labels, instance masks)
        return {k: to_device(v, device, preprocess) for k, v in batch.items()}
    return batch


# ------------------------------------------------------------------------------ loaders
def test_loader(test_set, cfg: TrainConfig, info: DistInfo, pin_memory: bool) -> Any:
    """This process's contiguous shard of the test set (all of it in a single process). Shards are
    not padded, so no image is evaluated twice; ``evaluate`` adds the sums over the processes."""
    from mixlab.data import eval_loader

    n = len(test_set)
    return eval_loader(test_set, cfg.data.eval_batch_size, cfg.data.num_workers, pin_memory,
                       start=n * info.rank // info.world_size, stop=n * (info.rank + 1) // info.world_size)


def figure_images(dataset, device: torch.device, n: int = 8) -> Tensor:
    """``n`` images evenly spread over ``dataset`` (its order, so a spread of classes), stacked on ``device``."""
    picks = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().long().tolist()
    return torch.stack([torch.as_tensor(dataset[i][0]) for i in picks]).to(device)


@dataclass
class RunData:
    """Everything a training run reads.

    Attributes:
        train_set: the training split with the method's per-image transform (augmentation).
        test_set: the test split with the default test transform.
        monitor_set: the un-augmented training split, the kNN monitor's memory bank (self-supervised
            runs; ``None`` otherwise).
        sampler: this process's :class:`EpochSampler` (``set_epoch`` before each epoch).
        train_loader: ``(images, labels)`` batches of ``data.batch_size``, last incomplete one dropped.
        test_loader: this process's shard of the test set (:func:`test_loader`).
        preprocess: uint8 batch on the device -> normalised float (:func:`normalizer`).
        train_inputs: a loader batch -> ``(images, labels)`` on the device, normalised (and
            augmented there on the device path): what the training step gets.
        device_augment: the batched augmenter when the augmentation runs on the device, else ``None``.
        figure_images: a few un-augmented training images, normalised, on the device (rank 0; the
            images of ``Method.epoch_figures``), else ``None``.
    """

    train_set: Any
    test_set: Any
    monitor_set: Any
    sampler: EpochSampler
    train_loader: DataLoader
    test_loader: Any
    preprocess: Callable[[Tensor], Tensor]
    train_inputs: Callable[[Any], tuple[Any, Tensor]]
    device_augment: Callable[..., Any] | None
    figure_images: Tensor | None


def run_data(cfg: TrainConfig, info: DistInfo, train_set, test_set, method, loader_generator: torch.Generator,
             augment_generator: torch.Generator | None = None) -> RunData:
    """The loaders of a run of ``method`` on ``(train_set, test_set)`` (from :func:`datasets`):
    the method's training transform on the default one, the same permutation and per-image
    augmentation seeds on every rank (rank 0's of a single process), each rank its own positions.

    With ``augment_generator`` (the device path, :func:`wants_device_augment`) the loader yields
    uint8 images and the method's batched transform (``method.device_transform``) runs in
    ``train_inputs``, drawing from it; a transform with no batched twin keeps the per-image path
    (with a note) when ``data.device_augment`` is null.

    Raises:
        ValueError: ``data.device_augment`` is true and the method's transform has no batched twin.
    """
    from mixlab.data import seed_worker
    from mixlab.transforms.device import UnsupportedTransform

    d, r = cfg.data, cfg.run
    on_gpu = info.device.type == "cuda"
    train_transform, test_transform = default_transforms(train_set, cfg)
    image_size = d.image_size if train_set.is_lazy else train_set.images.shape[-1]
    plain_train = train_set.with_transform(test_transform)  # the kNN memory bank and the figures' images
    test_set = test_set.with_transform(test_transform)
    preprocess = normalizer(train_set.mean, train_set.std, r.channels_last)
    augment = None
    if augment_generator is not None:
        try:
            pipeline = method.device_transform(train_transform, image_size=image_size)
            augment = device_augmenter(pipeline, augment_generator, train_set.mean, train_set.std, r.channels_last)
        except UnsupportedTransform as err:
            if d.device_augment:
                raise ValueError(f"data.device_augment is true but method {cfg.method.name!r}'s training transform "
                                 f"has no batched twin: {err}; set data.device_augment=false") from None
            if info.is_main:
                print(f"mixlab: note: augmentation stays per image in the loader ({err})", flush=True)
    train_set = train_set.with_transform(None if augment is not None else
                                         method.train_transform(train_transform, image_size=image_size))
    figures = preprocess(figure_images(plain_train, info.device)) if info.is_main else None
    sampler = EpochSampler(len(train_set), seed=mix_seed(r.seed, 0, 3), rank=info.rank, world_size=info.world_size)
    # images of several sizes: padded, with their sizes; decoded in the loader's workers, or in batches in the
    # main process (on the GPU with CUDA; on the CPU without workers)
    lazy = augment is not None and train_set.is_lazy
    encoded = lazy and (on_gpu or d.num_workers == 0)
    items = EncodedItems(train_set) if encoded else train_set
    train_loader = DataLoader(SeededItems(items, seed=mix_seed(r.seed, 0, 4)), batch_size=d.batch_size,
                              sampler=sampler, drop_last=True, num_workers=d.num_workers,
                              persistent_workers=d.num_workers > 0, pin_memory=on_gpu and not encoded,
                              worker_init_fn=seed_worker, generator=loader_generator,
                              collate_fn=encoded_collate if encoded else pad_collate if lazy else None)
    device = info.device

    def train_inputs(batch: Any) -> tuple[Any, Tensor]:
        if augment is None:
            return to_device(tuple(batch), device, preprocess)
        if encoded:
            from mixlab.data.tensor_dataset import decode_rgb_batch

            datas, labels, names = batch
            images, sizes = pad_images(decode_rgb_batch(datas, names, device))
            return augment(images, sizes), labels.to(device, non_blocking=True)
        if lazy:
            images, sizes, labels = batch
            return augment(images.to(device, non_blocking=True), sizes), labels.to(device, non_blocking=True)
        images, labels = batch
        return augment(images.to(device, non_blocking=True)), labels.to(device, non_blocking=True)

    return RunData(train_set=train_set, test_set=test_set,
                   monitor_set=plain_train if registry.is_self_supervised(method) else None, sampler=sampler,
                   train_loader=train_loader, test_loader=test_loader(test_set, cfg, info, on_gpu),
                   preprocess=preprocess, train_inputs=train_inputs, device_augment=augment, figure_images=figures)


def load_datasets(cfg: TrainConfig, info: DistInfo):
    """:func:`datasets` of this process; under data parallel an ImageFolder is decoded by rank 0
    into the disk cache first, which the other ranks then read."""
    if cfg.data.name == "imagefolder" and info.distributed:
        sets = on_main(lambda: datasets(cfg, info.world_size), info, share=False)
        return sets if sets is not None else datasets(cfg, info.world_size)
    return datasets(cfg, info.world_size)
