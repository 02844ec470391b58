"""Real data: the digits split, missing datasets, and that data-free stages open no real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, SMOKE
from repro import config, stages
from repro.data import CIFAR10, Digits, ImageFolderDataset, RealDataset
from repro.errors import UserError


def test_digits_split_is_stratified_disjoint_and_seeded() -> None:
    first, again, other = Digits(split_seed=0), Digits(split_seed=0), Digits(split_seed=1)
    sizes = {name: len(first.split(name)) for name in ("train", "heldout", "test")}
    assert sum(sizes.values()) == 1797 and sizes["test"] == 540
    index = {name: set(first._index[name].tolist()) for name in sizes}
    assert not (index["train"] & index["test"]) and not (index["train"] & index["heldout"])
    assert not (index["heldout"] & index["test"])
    assert first.describe() == again.describe() and first.describe() != other.describe()
    labels = first.split("test").tensors[1]
    counts = torch.bincount(labels, minlength=10).numpy()
    assert counts.min() >= 50 and counts.max() <= 56  # ~54 per class: stratified
    images = first.split("train").tensors[0]
    assert abs(float(images.mean())) < 1e-3 and abs(float(images.std()) - 1) < 1e-2  # normalised


def test_missing_cifar_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"CIFAR10 is not under .* bind CIFAR10.root"):
        CIFAR10(root=str(tmp_path), download=False).split("test")


def test_missing_image_folder_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        ImageFolderDataset(root=str(tmp_path / "nope"), num_classes=200)


def test_cifar_shaped_folder_loads_with_fakedata(tmp_path: Path) -> None:
    from torchvision.datasets import FakeData

    fake = FakeData(size=6, image_size=(3, 32, 32), num_classes=3, random_offset=0)
    for split in ("train", "val"):
        for index in range(6):
            image, label = fake[index]
            folder = tmp_path / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{index}.png")
    classes = len({fake[i][1] for i in range(6)})
    dataset = ImageFolderDataset(root=str(tmp_path), name="fake", image_size=32, num_classes=classes)
    image, _ = dataset.split("test")[0]
    assert image.shape == (3, 32, 32)


def test_distill_stage_opens_no_real_data(teacher_dir: Path, tmp_path: Path, monkeypatch) -> None:
    opened: list[str] = []

    def refuse(self, name, augment=False):
        opened.append(name)
        raise AssertionError(f"data-free stage opened real split {name!r}")

    monkeypatch.setattr(RealDataset, "split", refuse)
    import sklearn.datasets

    monkeypatch.setattr(sklearn.datasets, "load_digits", lambda *a, **k: refuse(None, "load_digits"))
    config.parse([REPO / "gin/experiments/digits.gin", REPO / "gin/methods/dafl.gin", REPO / "gin/profiles/smoke.gin"])
    out = stages.distill(teacher_dir, tmp_path / "student", tmp_path / "ckpt", track=False)
    assert (out / "model.safetensors").exists() and opened == []
