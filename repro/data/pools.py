"""Unlabeled pools for the sampling-based methods (MosaicKD, DFND): images from outside the
teacher's training data, with no labels, in [0, 1] at the teacher's image shape.

On the digits default the pool must really differ from the original data (KDCI's premise is a
shifted substitution set), so two offline sources are shipped:

- :class:`PhotoPatches`: natural-image patches cut from scikit-learn's two bundled photographs
  (``load_sample_images``: a temple in China, a flower): out-of-domain textures, like the
  "data in the wild" DFND and MosaicKD use.
- :class:`ShiftedDigits`: a degraded copy of the *held-out* digits split (never the teacher's
  training split, never the test split) with skewed class proportions; ``skew`` and
  ``degradation`` set the two kinds of shift the paper names (class proportions, image quality).

:class:`MixedPool` combines them (the digits default); :class:`DatasetPool` wraps any real
dataset's split (CIFAR-10 as MosaicKD's pool for CIFAR-100, an ImageNet or Places folder for DFND).
Every pool opens real data only through ``RealDataset.split`` of the split it names, so tests can
prove a method reads nothing else.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import gin
import torch
import torch.nn.functional as F

from repro.data.datasets import DataSpec, Digits, RealDataset
from repro.errors import UserError


def fit_shape(images: torch.Tensor, spec: DataSpec) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` images in [0, 1] to the spec's size and channel count."""
    if images.shape[1] != spec.channels:
        if spec.channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114])[: images.shape[1]]
            images = (images * (weights / weights.sum()).view(1, -1, 1, 1)).sum(1, keepdim=True)
        elif images.shape[1] == 1:
            images = images.expand(-1, spec.channels, -1, -1)
        else:
            raise UserError(f"pool images have {images.shape[1]} channels, the teacher expects {spec.channels}: "
                            "use a pool with 1 or the same number of channels")
    if images.shape[-1] != spec.image_size or images.shape[-2] != spec.image_size:
        images = F.interpolate(images, size=(spec.image_size, spec.image_size), mode="area")
    return images.clamp(0, 1)


def crop_and_flip(images: torch.Tensor, padding: int, flip: bool, fill: torch.Tensor) -> torch.Tensor:
    """torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()`` per image, on a batch.

    ``images`` ``[B, C, H, W]``; each is padded by ``padding`` pixels of ``fill`` (``[1, C, 1, 1]``, the
    padding value in the images' space), cropped back to ``H x W`` at a random offset and, with ``flip``,
    mirrored with probability 1/2. Integer shifts, so pixels are copied, never interpolated. Uses torch's
    RNG on the images' device (seeded and checkpointed by the Trainer).
    """
    batch, channels, height, width = images.shape
    device = images.device
    padded = fill.to(images.dtype).expand(batch, channels, height + 2 * padding, width + 2 * padding).clone()
    padded[:, :, padding:padding + height, padding:padding + width] = images
    top = torch.randint(2 * padding + 1, (batch, 1), device=device)
    left = torch.randint(2 * padding + 1, (batch, 1), device=device)
    rows = top + torch.arange(height, device=device)  # [B, H]
    columns = torch.arange(width, device=device).expand(batch, width)
    if flip:
        mirrored = torch.rand(batch, 1, device=device) < 0.5
        columns = torch.where(mirrored, columns.flip(1), columns)
    columns = left + columns  # [B, W]
    samples = torch.arange(batch, device=device).view(batch, 1, 1)
    picked = padded.permute(0, 2, 3, 1)[samples, rows.unsqueeze(2), columns.unsqueeze(1)]  # [B, H, W, C]
    return picked.permute(0, 3, 1, 2).contiguous()


class UnlabeledPool:
    """Base of every pool: ``images(spec)`` -> ``[N, C, H, W]`` in [0, 1]; ``describe()`` for records.

    ``crop_padding`` / ``flip``: the training augmentation the methods apply to pool images each time they
    draw them for the student (:meth:`augment`); none by default (digits: a mirrored digit is another digit).
    """

    crop_padding: int = 0
    flip: bool = False

    def images(self, spec: DataSpec) -> torch.Tensor:
        raise NotImplementedError

    def augment(self, images: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """Random crop (``crop_padding``) and horizontal flip (``flip``) of ``images`` [B, C, H, W]; ``fill``
        [1, C, 1, 1]: the padding value in the images' space. Identity when neither is set."""
        if self.crop_padding <= 0 and not self.flip:
            return images
        return crop_and_flip(images, max(self.crop_padding, 0), self.flip, fill)

    def describe(self) -> dict[str, Any]:
        return {"name": type(self).__name__}


@gin.configurable
class PhotoPatches(UnlabeledPool):
    """Random square patches of scikit-learn's bundled sample photographs, resized to the image size.

    Sides are drawn log-uniformly in ``[min_side, max_side]`` pixels so the pool holds both fine
    texture and whole objects; grey-scale for one-channel teachers.
    """

    def __init__(self, count: int = 4096, min_side: int = 8, max_side: int = 96, seed: int = 0) -> None:
        if count <= 0 or not 0 < min_side <= max_side:
            raise UserError(f"PhotoPatches: count = {count}, sides {min_side}..{max_side} are invalid: "
                            "count > 0 and 0 < min_side <= max_side")
        self.count, self.min_side, self.max_side, self.seed = count, min_side, max_side, seed

    def images(self, spec: DataSpec) -> torch.Tensor:
        from sklearn.datasets import load_sample_images

        photos = [torch.tensor(image).permute(2, 0, 1).float() / 255.0 for image in load_sample_images().images]
        generator = torch.Generator().manual_seed(self.seed)
        patches = []
        for _ in range(self.count):
            photo = photos[int(torch.randint(len(photos), (1,), generator=generator))]
            height, width = photo.shape[-2:]
            low, high = math.log(self.min_side), math.log(min(self.max_side, height, width))
            side = int(round(math.exp(low + (high - low) * float(torch.rand(1, generator=generator)))))
            top = int(torch.randint(height - side + 1, (1,), generator=generator))
            left = int(torch.randint(width - side + 1, (1,), generator=generator))
            patch = photo[:, top:top + side, left:left + side].unsqueeze(0)
            patches.append(fit_shape(patch, spec))
        return torch.cat(patches)

    def describe(self) -> dict[str, Any]:
        return {"name": "photo_patches", "source": "sklearn.datasets.load_sample_images", "count": self.count,
                "sides": [self.min_side, self.max_side], "seed": self.seed}


def class_weights(num_classes: int, skew: float) -> torch.Tensor:
    """Class proportions ``p_k ~ exp(-skew * k / (K - 1))``: uniform at 0, a max/min ratio of e^skew."""
    ranks = torch.arange(num_classes, dtype=torch.float64) / max(num_classes - 1, 1)
    weights = torch.exp(-skew * ranks)
    return (weights / weights.sum()).float()


def degrade(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Blur, noise and contrast loss, all scaled by ``strength`` in [0, 1] (0 leaves images as they are).

    Blur: a 3x3 Gaussian (sigma 1) mixed in with weight ``strength``; noise: N(0, (0.3 strength)^2);
    contrast: pulled towards mid-grey by ``strength / 2``. Images stay in [0, 1].
    """
    if strength <= 0:
        return images
    kernel_1d = torch.tensor([0.27407, 0.45186, 0.27407])
    kernel = (kernel_1d[:, None] * kernel_1d[None, :]).view(1, 1, 3, 3).repeat(images.shape[1], 1, 1, 1)
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=images.shape[1])
    out = (1 - strength) * images + strength * blurred
    out = out + 0.3 * strength * torch.randn(out.shape, generator=generator)
    out = 0.5 + (out - 0.5) * (1 - strength / 2)
    return out.clamp(0, 1)


@gin.configurable
class ShiftedDigits(UnlabeledPool):
    """Degraded, class-skewed copies of the held-out digits split (the controlled-shift pool).

    ``skew``: class proportions ``exp(-skew k / 9)`` (0 = balanced; 3 = a 20x ratio between the most
    and least frequent digit); ``degradation`` in [0, 1]: see :func:`degrade`. ``count`` images are
    drawn with replacement, each copy degraded with its own noise. Labels are used only to impose the
    skew; the methods never see them.
    """

    def __init__(self, dataset: Digits = gin.REQUIRED, count: int = 2048, skew: float = 2.0,
                 degradation: float = 0.5, seed: int = 0) -> None:
        if count <= 0 or skew < 0 or not 0 <= degradation <= 1:
            raise UserError(f"ShiftedDigits: count = {count}, skew = {skew}, degradation = {degradation} are invalid: "
                            "count > 0, skew >= 0, degradation in [0, 1]")
        self.dataset, self.count, self.skew, self.degradation, self.seed = dataset, count, skew, degradation, seed
        self.proportions: list[float] = []

    def images(self, spec: DataSpec) -> torch.Tensor:
        heldout = self.dataset.split("heldout")
        source, labels = heldout.tensors
        ds = self.dataset.spec
        source = source * torch.tensor(ds.std).view(1, -1, 1, 1) + torch.tensor(ds.mean).view(1, -1, 1, 1)
        generator = torch.Generator().manual_seed(self.seed)
        per_image = class_weights(ds.num_classes, self.skew)[labels]
        per_image = per_image / torch.bincount(labels, minlength=ds.num_classes)[labels]  # class total = its weight
        index = torch.multinomial(per_image, self.count, replacement=True, generator=generator)
        counts = torch.bincount(labels[index], minlength=ds.num_classes).float()
        self.proportions = (counts / counts.sum()).tolist()
        return fit_shape(degrade(source[index].clamp(0, 1), self.degradation, generator), spec)

    def describe(self) -> dict[str, Any]:
        return {"name": "shifted_digits", "split": "heldout", "count": self.count, "skew": self.skew,
                "degradation": self.degradation, "seed": self.seed,
                "class_proportions": [round(p, 4) for p in self.proportions]}


@gin.configurable
class MixedPool(UnlabeledPool):
    """The union of several pools (e.g. photo patches + shifted digits, the digits default)."""

    def __init__(self, pools: Sequence[UnlabeledPool] = gin.REQUIRED) -> None:
        if not pools:
            raise UserError("MixedPool.pools is empty: list at least one pool")
        self.pools = list(pools)

    def images(self, spec: DataSpec) -> torch.Tensor:
        return torch.cat([pool.images(spec) for pool in self.pools])

    def describe(self) -> dict[str, Any]:
        return {"name": "mixed", "pools": [pool.describe() for pool in self.pools]}


@gin.configurable
class DatasetPool(UnlabeledPool):
    """The images of one split of a real dataset, labels dropped: CIFAR-10 (train) as MosaicKD's pool
    for CIFAR-100, an ImageNet / Places folder for DFND. ``count`` caps how many are loaded (a seeded
    random subset) so a large folder fits in memory."""

    def __init__(self, dataset: RealDataset = gin.REQUIRED, split: str = "train", count: int = 50_000,
                 seed: int = 0, num_workers: int = 0, crop_padding: int = 0, flip: bool = False) -> None:
        if count <= 0:
            raise UserError(f"DatasetPool.count = {count}: must be > 0")
        if num_workers < 0:
            raise UserError(f"DatasetPool.num_workers = {num_workers}: must be >= 0")
        if crop_padding < 0:
            raise UserError(f"DatasetPool.crop_padding = {crop_padding}: must be >= 0 pixels")
        self.dataset, self.split, self.count, self.seed = dataset, split, count, seed
        self.num_workers, self.crop_padding, self.flip = num_workers, crop_padding, flip

    def images(self, spec: DataSpec) -> torch.Tensor:
        """``[count, C, H, W]`` in [0, 1], float32, resized to ``spec``. Memory: count x C x H x W x 4 bytes
        (50k CIFAR images: 0.6 GB; 50k at 224 px: 30 GB; lower ``count`` for ImageNet-scale pools)."""
        from torch.utils.data import DataLoader, Subset

        data = self.dataset.split(self.split)
        generator = torch.Generator().manual_seed(self.seed)
        index = torch.randperm(len(data), generator=generator)[: self.count].tolist()
        ds = self.dataset.spec
        mean, std = torch.tensor(ds.mean).view(-1, 1, 1), torch.tensor(ds.std).view(-1, 1, 1)
        # Decoding is the cost for image folders: loader workers decode in parallel, order is kept.
        loader = DataLoader(Subset(data, index), batch_size=512, shuffle=False, num_workers=self.num_workers)
        return torch.cat([fit_shape(chunk * std + mean, spec) for chunk, _ in loader])

    def describe(self) -> dict[str, Any]:
        return {"name": "dataset", "dataset": self.dataset.describe(), "split": self.split, "count": self.count,
                "crop_padding": self.crop_padding, "flip": self.flip}
