"""Real data: the digits split, missing datasets, and that data-free stages open no real data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import REPO
from repro import config
from repro.data.datasets import CIFAR10, Digits, ImageFolderDataset, RealDataset
from repro.errors import UserError
from repro.pipeline import stages


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


METHODS = sorted(path.stem for path in (REPO / "gin/methods").glob("*.gin"))
SAMPLING = {"mosaickd", "dfnd"}  # read their unlabeled pool: on digits, the held-out split only


@pytest.mark.parametrize("method", METHODS)
def test_distill_reads_no_real_data_but_the_pool(method: str, teacher_dir: Path, tmp_path: Path, monkeypatch) -> None:
    opened: list[str] = []
    original = RealDataset.split

    def guarded(self, name, augment=False):
        opened.append(name)
        if method not in SAMPLING or name != "heldout":
            raise AssertionError(f"{method} opened real split {name!r}")
        return original(self, name, augment)

    monkeypatch.setattr(RealDataset, "split", guarded)
    if method not in SAMPLING:  # a synthesising method does not even load the digits bundle
        import sklearn.datasets

        monkeypatch.setattr(sklearn.datasets, "load_digits", lambda *a, **k: guarded(None, "load_digits"))
    config.parse([REPO / "gin/experiments/digits.gin", REPO / f"gin/methods/{method}.gin", REPO / "gin/profiles/smoke.gin"],
                 ["DISTILL_EPOCHS = 1", "distill.substitution_sample_size = 64"])
    out = stages.distill(teacher_dir, tmp_path / "student", tmp_path / "ckpt", track=False)
    assert (out / "model.safetensors").exists()
    assert opened == (["heldout"] if method in SAMPLING else [])


def test_shifted_digits_pool_has_the_skew_and_degradation_asked_for() -> None:
    from repro.data.pools import ShiftedDigits, class_weights

    spec = Digits().spec
    clean = ShiftedDigits(dataset=Digits(), count=4000, skew=0.0, degradation=0.0).images(spec)
    skewed_pool = ShiftedDigits(dataset=Digits(), count=4000, skew=3.0, degradation=1.0)
    skewed = skewed_pool.images(spec)
    proportions = torch.tensor(skewed_pool.proportions)
    assert torch.allclose(proportions, class_weights(10, 3.0), atol=0.02)  # digit 0 ~20x digit 9
    assert proportions[0] / proportions[9] > 10
    assert clean.shape == skewed.shape == (4000, 1, 8, 8) and 0 <= float(skewed.min()) and float(skewed.max()) <= 1
    # Degradation: less contrast (values pulled to mid-grey) and less sharp edges.
    assert float(skewed.std()) < 0.8 * float(clean.std())


def test_photo_patches_are_not_digits() -> None:
    from repro.data.pools import PhotoPatches

    spec = Digits().spec
    patches = PhotoPatches(count=64).images(spec)
    digits = Digits().split("train").tensors[0][:64] * spec.std[0] + spec.mean[0]
    assert patches.shape == (64, 1, 8, 8)
    # Digits have a black background (most pixels ~0); photo patches rarely do.
    assert float((digits < 0.05).float().mean()) > 0.4 > float((patches < 0.05).float().mean())
