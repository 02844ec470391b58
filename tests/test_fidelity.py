"""Issue 13, item 4: the baselines as their reference code has them, and the class-skew knob.

Flips only where a mirrored image is still an image of the data (not digits); MosaicKD's patch loss
summed over patches; DFND's lowest-cross-entropy selection; the reference pool augmentation for CIFAR;
CMI's head widths; KDCI's dictionary from distinct images; a skewed target-class prior for synthesis.
"""

from __future__ import annotations

import math

import gin
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from repro import config, losses, nets
from repro.data.datasets import DataSpec
from repro.data.pools import UnlabeledPool, crop_and_flip
from repro.errors import UserError
from repro.kdci.method import KDCI
from repro.methods.deepinv import DeepInversion
from repro.methods.dfnd import DFND
from repro.methods.generative import GenerativeDFKD
from repro.methods.inversion import draw_targets, target_prior
from repro.methods.mosaickd import patch_loss
from repro.nets.spec import NetSpec
from repro.train.device import seed_everything

SPEC = DataSpec(name="digits", num_classes=10, channels=1, image_size=8, mean=(0.3,), std=(0.37,))
CPU = torch.device("cpu")
DIGITS = REPO / "gin/experiments/digits.gin"
CIFAR = REPO / "gin/experiments/cifar10_wrn40_2-wrn16_1.gin"
SMALL = ["DeepInversion.synthesis_batch_size = 4", "DeepInversion.synthesis_steps = 12", "CMI.synthesis_batch_size = 4",
         "CMI.synthesis_steps = 3", "CMI.negatives = 8", "Fast.synthesis_batch_size = 4", "Fast.warmup_rounds = 0"]


def _method(experiment, method: str, *bindings: str):
    config.parse([experiment, REPO / f"gin/methods/{method}.gin", REPO / "gin/profiles/smoke.gin"], [*SMALL, *bindings])
    return gin.query_parameter("distill.method").scoped_configurable_fn()


def _ready(method):
    method.setup(nets.create("digits_cnn_small"), nets.create("digits_cnn_small"), SPEC, CPU)
    return method


# 1. No horizontal flips when inverting digits.

@pytest.mark.parametrize("name", ["deepinv", "cmi", "fast"])
def test_inversion_flips_cifar_but_never_digits(name: str) -> None:
    assert _method(CIFAR, name).flip is True  # the benchmark's RandomHorizontalFlip at 32x32
    assert _method(DIGITS, name).flip is False


@pytest.mark.parametrize("name", ["cmi", "fast"])
def test_digits_views_are_never_mirrored(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    module = importlib.import_module(f"repro.methods.{name}")
    asked = []
    real = module.random_views

    def spy(images, *args, **kwargs):
        asked.append(kwargs.get("flip", False))
        return real(images, *args, **kwargs)

    monkeypatch.setattr(module, "random_views", spy)
    seed_everything(0)
    _ready(_method(DIGITS, name)).synthesize()
    assert asked and not any(asked)


def test_deepinversion_on_digits_never_flips(monkeypatch: pytest.MonkeyPatch) -> None:
    flips = []
    real = torch.flip
    monkeypatch.setattr(torch, "flip", lambda *a, **k: flips.append(1) or real(*a, **k))
    seed_everything(0)
    _ready(_method(DIGITS, "deepinv")).synthesize()
    assert not flips
    seed_everything(0)
    _ready(_method(DIGITS, "deepinv", "DeepInversion.flip = True")).synthesize()  # the spy sees flips when on
    assert flips


# 2. MosaicKD: the patch loss is summed over patches, averaged over images.

def test_patch_loss_sums_over_patches_and_averages_over_images() -> None:
    logits = torch.zeros(3, 1, 4, 4)  # BCE of logit 0 is log 2 per patch
    assert torch.allclose(patch_loss(logits, real=True), torch.tensor(16 * math.log(2)))
    seeded = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    mean = F.binary_cross_entropy_with_logits(seeded, torch.zeros_like(seeded))
    assert torch.allclose(patch_loss(seeded, real=False), mean * 4)


# 3. DFND: the lowest teacher cross-entropy over the whole pool by default; class-balanced as an option.

def _dfnd_selection(**settings) -> torch.Tensor:
    method = DFND(pool=UnlabeledPool(), num_selected=4, selected_per_class=2, **settings)
    # "Images" that are their own logits: six confident class-0 images, three unsure class-1 ones.
    method.teacher = lambda x: x.flatten(1)
    confident = torch.tensor([[6.0 + i, 0.0] for i in range(6)])
    unsure = torch.tensor([[0.0, 0.5 + 0.1 * i] for i in range(3)])
    method.pool_images = torch.cat([confident, unsure]).view(-1, 2, 1, 1)
    return method._select().flatten(1)


def test_dfnd_selects_lowest_cross_entropy_over_the_whole_pool_by_default() -> None:
    selected = _dfnd_selection()
    assert len(selected) == 4 and (selected.argmax(1) == 0).all()  # the class shift is kept
    assert sorted(selected[:, 0].tolist()) == [8.0, 9.0, 10.0, 11.0]  # the four most confident


def test_dfnd_class_balanced_selection_is_an_option() -> None:
    selected = _dfnd_selection(selection="class_balanced")
    assert torch.bincount(selected.argmax(1), minlength=2).tolist() == [2, 2]
    with pytest.raises(UserError, match="DFND.selection"):
        DFND(pool=UnlabeledPool(), selection="per_class")


def test_dfnd_gin_default_is_the_reference_selection() -> None:
    method = _method(DIGITS, "dfnd")
    assert method.selection == "lowest_ce" and method.num_selected == 500  # smoke budget


# 4. Pool augmentation: RandomCrop(32, padding=4) + RandomHorizontalFlip for CIFAR pools, none for digits.

def test_crop_and_flip_copies_a_window_of_the_padded_image() -> None:
    torch.manual_seed(0)
    images = torch.randn(64, 2, 5, 5)
    fill = torch.tensor([-1.0, -2.0]).view(1, 2, 1, 1)
    out = crop_and_flip(images, padding=2, flip=True, fill=fill)
    padded = fill.expand(64, 2, 9, 9).clone()
    padded[:, :, 2:7, 2:7] = images
    mirrored = 0
    for i in range(64):
        windows = [padded[i, :, r:r + 5, c:c + 5] for r in range(5) for c in range(5)]
        plain = any(torch.equal(out[i], w) for w in windows)
        flipped = any(torch.equal(out[i], w.flip(-1)) for w in windows)
        assert plain or flipped
        mirrored += flipped and not plain
    assert 10 < mirrored < 54  # about half
    assert torch.equal(crop_and_flip(images, padding=0, flip=False, fill=fill), images)


def test_cifar_pools_are_augmented_and_digits_pools_are_not() -> None:
    config.parse([CIFAR, REPO / "gin/methods/dfnd.gin"])
    assert gin.query_parameter("DatasetPool.crop_padding") == 4 and gin.query_parameter("DatasetPool.flip") is True
    method = _method(DIGITS, "dfnd")
    images = torch.randn(4, 1, 8, 8)
    assert method.unlabeled.augment(images, torch.zeros(1, 1, 1, 1)) is images


# 5. CMI's projection head at the reference widths.

def test_cmi_head_widths_match_the_reference() -> None:
    method = _ready(_method(DIGITS, "cmi"))
    first, last = method.head.net[0], method.head.net[2]
    features = sum(layer.num_features for layer in method.bn.layers)
    assert (first.in_features, first.out_features, last.out_features) == (features, features, 256)


# 6. KDCI's dictionary: distinct substitution images only.

def _kdci_on_deepinversion(batch: int, **settings) -> KDCI:
    base = DeepInversion(image_optimizer=torch.optim.Adam, synthesis_batch_size=batch, synthesis_steps=1)
    method = KDCI(base=base, num_prototypes=4, pca_dim=8, dictionary_samples=2048, **settings)
    method.setup(nets.create("digits_cnn_small"), nets.create("digits_cnn_small"), SPEC, CPU)
    return method


def test_dictionary_uses_each_pool_image_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seed_everything(0)
    method = _kdci_on_deepinversion(40)
    method.base.synthesize()
    seen = []
    real = method.teacher_features
    monkeypatch.setattr(method, "teacher_features", lambda images: seen.append(images) or real(images))
    dictionary = method.rebuild_dictionary()
    images = torch.cat(seen).flatten(1)
    assert len(images) == 40 == len(torch.unique(images, dim=0))  # M capped at the pool, no repeats
    assert dictionary.metadata()["samples"] == "40"


def test_dictionary_tops_up_a_pool_too_small_to_cluster() -> None:
    seed_everything(0)
    method = _kdci_on_deepinversion(3)  # 3 images per round; PCA to 8 dimensions needs 8
    dictionary = method.rebuild_dictionary()
    assert len(method.base.pool) == 9 and dictionary.metadata()["samples"] == "9"


# 7. The target-class prior of synthesis.

def test_class_skew_zero_draws_exactly_the_uniform_labels_of_before() -> None:
    torch.manual_seed(3)
    before = torch.randint(10, (256,))
    torch.manual_seed(3)
    assert torch.equal(draw_targets(256, 10, 0.0, CPU), before)


def test_skewed_labels_follow_the_prior() -> None:
    torch.manual_seed(0)
    labels = draw_targets(100_000, 10, 2.0, CPU)
    share = torch.bincount(labels, minlength=10).float() / len(labels)
    prior = target_prior(10, 2.0)
    assert torch.allclose(share, prior, atol=0.005)
    assert math.isclose(float(prior[0] / prior[-1]), math.e ** 2, rel_tol=1e-5)


@pytest.mark.parametrize("name", ["deepinv", "cmi", "fast"])
def test_inversion_methods_draw_targets_with_their_class_skew(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    module = importlib.import_module(f"repro.methods.{name}")
    asked = []
    monkeypatch.setattr(module, "draw_targets", lambda count, classes, skew, device: asked.append(skew)
                        or draw_targets(count, classes, skew, device))
    configurable = {"deepinv": "DeepInversion", "cmi": "CMI", "fast": "Fast"}[name]
    method = _method(DIGITS, name, f"{configurable}.class_skew = 1.5")
    assert method.describe()["class_skew"] == 1.5
    seed_everything(0)
    _ready(method).synthesize()
    assert asked and set(asked) == {1.5}


def test_dafl_balance_term_aims_at_the_prior() -> None:
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    uniform = torch.full((10,), 0.1)
    # A uniform prior is DAFL's own term up to the constant log K.
    assert torch.allclose(losses.class_prior_loss(logits, uniform),
                          losses.information_entropy_loss(logits) + math.log(10), atol=1e-6)
    assert losses.class_prior_loss(torch.log(target_prior(10, 2.0)).expand(4, 10), target_prior(10, 2.0)).abs() < 1e-6
    method = _method(DIGITS, "dafl", "GenerativeDFKD.class_skew = 2.0")
    assert method.describe()["class_skew"] == 2.0
    _ready(method).synthesize()
    with pytest.raises(UserError, match="class_skew"):
        GenerativeDFKD(generator=NetSpec("dcgan_generator", {}), generator_optimizer=torch.optim.Adam,
                       entropy_weight=0.0, class_skew=1.0)
