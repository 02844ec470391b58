"""Real datasets, their normalisation, and the record of which split a stage opened.

Only two stages may read real data: the teacher stage (training split) and evaluation (test
split). Data-free stages get everything they need (class count, image shape, normalisation) from
the teacher's artefact through :class:`DataSpec`, so they never construct a dataset at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Sequence

import gin
import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from repro.errors import UserError

SPLITS = ("train", "heldout", "test")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a network needs to know about its data: written into every artefact's config.json."""

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map images in [0, 1], shape [B, C, H, W], to the network's input space."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> "DataSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = fields - set(record)
        if missing:
            raise UserError(f"data spec is missing {sorted(missing)}: the artefact's config.json is incomplete; re-run the stage that wrote it")
        return cls(**{k: (tuple(record[k]) if k in ("mean", "std") else record[k]) for k in fields})


class RealDataset:
    """Base of every real dataset: a spec, named splits, and a log of the splits opened."""

    spec: DataSpec

    def __init__(self) -> None:
        self.opened: list[str] = []

    def split(self, name: str, augment: bool = False) -> Dataset:
        """The named split as a dataset of (image [C, H, W] normalised, label) pairs."""
        if name not in self.available_splits():
            raise UserError(
                f"dataset {self.spec.name!r} has no split {name!r}; it has {', '.join(self.available_splits())}"
            )
        self.opened.append(name)
        return self._load_split(name, augment)

    def available_splits(self) -> Sequence[str]:
        return ("train", "test")

    def _load_split(self, name: str, augment: bool) -> Dataset:
        raise NotImplementedError

    def describe(self) -> dict:
        """Everything needed to rebuild the same splits (recorded in artefacts)."""
        return {"name": self.spec.name}


@gin.configurable
class Digits(RealDataset):
    """scikit-learn's bundled handwritten digits (8x8, 16 grey levels, 10 classes, 1797 images).

    A fixed, seeded, stratified three-way split: ``train`` (the teacher's), ``heldout`` (never seen by
    the teacher nor used for testing; the offline pool sampling-based methods may draw from) and
    ``test`` (evaluation). A test split over 20% of the data keeps seed noise down (issue 3's probe).
    """

    def __init__(self, split_seed: int = 0, test_fraction: float = 0.3, heldout_fraction: float = 0.2) -> None:
        super().__init__()
        if not (0 < test_fraction < 1 and 0 <= heldout_fraction < 1 and test_fraction + heldout_fraction < 0.9):
            raise UserError(
                f"Digits fractions test={test_fraction}, heldout={heldout_fraction} are out of range: "
                "each must lie in [0, 1) and leave at least 10% for training"
            )
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8] in [0, 1]
        labels = torch.tensor(bunch.target, dtype=torch.long)
        index = np.arange(len(labels))
        rest, test = train_test_split(index, test_size=test_fraction, stratify=bunch.target, random_state=split_seed)
        heldout_share = heldout_fraction / (1.0 - test_fraction)
        if heldout_fraction > 0:
            train, heldout = train_test_split(
                rest, test_size=heldout_share, stratify=bunch.target[rest], random_state=split_seed
            )
        else:
            train, heldout = rest, np.array([], dtype=int)
        self._index = {"train": np.sort(train), "heldout": np.sort(heldout), "test": np.sort(test)}
        self._images, self._labels = images, labels
        self._settings = {"split_seed": split_seed, "test_fraction": test_fraction, "heldout_fraction": heldout_fraction}
        # Normalisation statistics of the training split: the teacher's input convention.
        train_pixels = images[self._index["train"]]
        self.spec = DataSpec(
            name="digits",
            num_classes=10,
            channels=1,
            image_size=8,
            mean=(round(float(train_pixels.mean()), 6),),
            std=(round(float(train_pixels.std()), 6),),
        )

    def available_splits(self) -> Sequence[str]:
        return SPLITS if len(self._index["heldout"]) else ("train", "test")

    def _load_split(self, name: str, augment: bool) -> Dataset:
        idx = torch.as_tensor(self._index[name])
        # 8x8 digits are not augmented: crops/flips change the class of a digit (6 vs 9, 2 vs 5).
        return TensorDataset(self.spec.normalize(self._images[idx]), self._labels[idx])

    def describe(self) -> dict:
        digest = hashlib.sha256()
        for name in SPLITS:
            digest.update(name.encode() + self._index[name].astype(np.int64).tobytes())
        return {
            "name": "digits",
            "source": "sklearn.datasets.load_digits",
            **self._settings,
            "split_sizes": {name: int(len(self._index[name])) for name in SPLITS},
            "split_sha256": digest.hexdigest(),
        }


# Per-channel statistics of the CIFAR training sets, as used by the zju-vipa CMI benchmark
# (datafree/registry.py NORMALIZE_DICT).
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
# ImageNet statistics (torchvision's pretrained models); also used for Tiny-ImageNet.
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _image_transform(spec: DataSpec, augment: bool, crop_padding: int | None):
    from torchvision import transforms

    steps = []
    if augment:
        # Benchmark teacher recipe: random crop with padding, horizontal flip.
        if crop_padding is not None:
            steps.append(transforms.RandomCrop(spec.image_size, padding=crop_padding))
        else:
            steps.append(transforms.RandomResizedCrop(spec.image_size))
        steps.append(transforms.RandomHorizontalFlip())
    elif crop_padding is None:
        steps += [transforms.Resize(int(spec.image_size * 256 / 224)), transforms.CenterCrop(spec.image_size)]
    steps += [transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)]
    return transforms.Compose(steps)


class _Cifar(RealDataset):
    torchvision_name: str = ""
    num_classes: int = 0

    def __init__(self, root: str = "data", download: bool = True) -> None:
        super().__init__()
        self.root, self.download = root, download
        key = self.torchvision_name.lower()
        mean, std = _CIFAR_STATS[key]
        self.spec = DataSpec(name=key, num_classes=self.num_classes, channels=3, image_size=32, mean=mean, std=std)

    def _load_split(self, name: str, augment: bool) -> Dataset:
        import torchvision

        cls = getattr(torchvision.datasets, self.torchvision_name)
        transform = _image_transform(self.spec, augment, crop_padding=4)
        try:
            return cls(self.root, train=(name == "train"), transform=transform, download=self.download)
        except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError depending on the failure
            raise UserError(
                f"{self.torchvision_name} is not under {self.root!r} and could not be downloaded "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}): "
                f"download it with internet access or bind {type(self).__name__}.root to the folder holding it"
            ) from None

    def describe(self) -> dict:
        return {"name": self.spec.name, "source": f"torchvision.datasets.{self.torchvision_name}", "root": self.root}


@gin.configurable
class CIFAR10(_Cifar):
    """CIFAR-10 through torchvision (downloaded into ``root`` when allowed)."""

    torchvision_name, num_classes = "CIFAR10", 10


@gin.configurable
class CIFAR100(_Cifar):
    """CIFAR-100 through torchvision (downloaded into ``root`` when allowed)."""

    torchvision_name, num_classes = "CIFAR100", 100


@gin.configurable
class ImageFolderDataset(RealDataset):
    """Tiny-ImageNet, ImageNet or any dataset laid out as ``root/{train,val}/<class>/<image>``.

    Tiny-ImageNet's official ``val/`` keeps labels in ``val_annotations.txt``: move its images into
    class folders first (README). ``test`` reads ``val/``, as the papers report validation accuracy.
    """

    def __init__(self, root: str = gin.REQUIRED, name: str = "imagefolder", image_size: int = 64,
                 num_classes: int = gin.REQUIRED) -> None:
        super().__init__()
        self.root = Path(root)
        for sub in ("train", "val"):
            if not (self.root / sub).is_dir():
                raise UserError(
                    f"dataset folder {self.root / sub} does not exist: bind ImageFolderDataset.root to a folder "
                    "with train/ and val/ subfolders of class folders"
                )
        mean, std = _IMAGENET_STATS
        self.spec = DataSpec(name=name, num_classes=num_classes, channels=3, image_size=image_size, mean=mean, std=std)

    def _load_split(self, name: str, augment: bool) -> Dataset:
        from torchvision.datasets import ImageFolder
        from torchvision.datasets.folder import default_loader, find_classes

        folder = self.root / ("train" if name == "train" else "val")
        # Tiny-ImageNet at 64 px is trained with crop-and-pad like CIFAR; larger images use resized crops.
        padding = 8 if self.spec.image_size <= 64 else None
        size = self.spec.image_size

        def load(path: str):
            try:
                image = default_loader(path)
            except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
                raise UserError(f"{path} is not a readable image ({type(exc).__name__}): remove or replace it") from None
            # Crop-and-pad keeps the stored size, so every image must already have it (no silent resize).
            if padding is not None and image.size != (size, size):
                raise UserError(f"{path} is {image.size[0]}x{image.size[1]} pixels but ImageFolderDataset.image_size "
                                f"is {size}: resize the images or bind image_size to their size")
            return image

        try:
            dataset = ImageFolder(str(folder), transform=_image_transform(self.spec, augment, padding), loader=load)
            other = find_classes(str(self.root / ("val" if name == "train" else "train")))[0]
        except (FileNotFoundError, OSError) as exc:  # e.g. a class folder with no image in it
            raise UserError(f"{folder} is not a usable image folder ({str(exc).splitlines()[0]}): it needs one folder "
                            "per class, each with at least one image") from None
        if len(dataset.classes) != self.spec.num_classes:
            raise UserError(
                f"{folder} has {len(dataset.classes)} class folders but num_classes is {self.spec.num_classes}: "
                "bind ImageFolderDataset.num_classes to the right count or fix the folder"
            )
        if dataset.classes != other:  # labels are class-folder indices: both splits must list the same classes
            differ = sorted(set(dataset.classes) ^ set(other))[:5]
            raise UserError(f"{self.root}/train and {self.root}/val have different class folders (e.g. {', '.join(differ)}): "
                            "give both splits the same classes")
        return dataset

    def describe(self) -> dict:
        return {"name": self.spec.name, "source": "torchvision.datasets.ImageFolder", "root": str(self.root)}


# Shapes of the datasets FakeImages can stand in for: (classes, image size, normalisation).
_FAKE_LIKE = {
    "cifar10": (10, 32, _CIFAR_STATS["cifar10"]),
    "cifar100": (100, 32, _CIFAR_STATS["cifar100"]),
    "tiny_imagenet": (200, 64, _IMAGENET_STATS),
    "imagenet": (1000, 224, _IMAGENET_STATS),
}


@gin.configurable
class FakeImages(RealDataset):
    """Random images (torchvision ``FakeData``) with the spec of a real dataset, e.g. CIFAR-100.

    For tests and ``repro bench`` of CIFAR/ImageNet-shaped code paths where the data cannot be
    downloaded: the networks, budgets and memory are those of the real experiment; accuracies
    mean nothing. Each split draws from its own seed range.
    """

    def __init__(self, like: str = "cifar10", size: int = 256) -> None:
        super().__init__()
        if like not in _FAKE_LIKE:
            raise UserError(f"FakeImages.like = {like!r} is unknown: use one of {', '.join(_FAKE_LIKE)}")
        if size <= 0:
            raise UserError(f"FakeImages.size = {size} is invalid: it must be a positive integer")
        classes, image_size, (mean, std) = _FAKE_LIKE[like]
        self.size = size
        self.spec = DataSpec(name=like, num_classes=classes, channels=3, image_size=image_size, mean=mean, std=std)

    def available_splits(self) -> Sequence[str]:
        return SPLITS

    def _load_split(self, name: str, augment: bool) -> Dataset:
        from torchvision import transforms
        from torchvision.datasets import FakeData

        offset = {"train": 0, "heldout": 1, "test": 2}[name] * 1_000_003
        return FakeData(size=self.size, image_size=(3, self.spec.image_size, self.spec.image_size),
                        num_classes=self.spec.num_classes, random_offset=offset,
                        transform=transforms.Compose([transforms.ToTensor(),
                                                      transforms.Normalize(self.spec.mean, self.spec.std)]))

    def describe(self) -> dict:
        return {"name": self.spec.name, "source": "torchvision.datasets.FakeData (random images)", "size": self.size}
