"""Tests for repro.nets: registry behaviour, classifier interface, sizes, generator."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from repro.nets import Classifier, create, list_networks, register
from repro.nets import registry as registry_mod

torch.set_num_threads(2)

GENERATORS = {"dcgan_generator", "patch_discriminator"}  # not classifiers
CLASSIFIERS = [n for n in list_networks() if n not in GENERATORS]
# Natural input shape (C, H, W) per family.
DIGITS_SHAPE = (1, 8, 8)
CIFAR_SHAPE = (3, 32, 32)

PARAM_RANGES = {
    "resnet18": (11.0e6, 11.4e6),
    "resnet34": (21.1e6, 21.5e6),
    "wrn40_2": (2.1e6, 2.3e6),
    "wrn16_1": (0.16e6, 0.19e6),
    # zju-vipa / RepDistiller VGG-11-BN, 10 classes: 8 biased 3x3 convs 9,220,480 (1,792 + 73,856 + 295,168
    # + 590,080 + 1,180,160 + 3 x 2,359,808) + BN affine 5,504 + linear 512x10+10 = 5,130 -> 9,231,114.
    # Tight enough to reject bias-free convolutions (2,752 fewer) or an extra FC layer.
    "vgg11_bn": (9.230e6, 9.232e6),
    "digits_cnn_large": (250e3, 350e3),
    "digits_cnn_small": (20e3, 80e3),
}


def _input_shape(name: str) -> tuple[int, int, int]:
    return DIGITS_SHAPE if name.startswith("digits") else CIFAR_SHAPE


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_expected_networks_registered() -> None:
    expected = {
        "resnet18", "resnet34", "vgg11_bn", "wrn16_1", "wrn16_2", "wrn40_1", "wrn40_2",
        "digits_cnn_large", "digits_cnn_small", "dcgan_generator",
    }
    assert expected <= set(list_networks())
    assert list_networks() == sorted(list_networks())


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", CLASSIFIERS)
@torch.no_grad()
def test_classifier_interface(name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    model = create(name, num_classes=num_classes).eval()
    assert isinstance(model, Classifier)
    assert model.num_classes == num_classes
    x = torch.randn(2, *_input_shape(name))

    logits = model(x)
    assert logits.shape == (2, num_classes)

    feats = model.features(x)
    assert feats.shape == (2, model.feature_dim)

    out = model(x, return_features=True)
    assert isinstance(out, tuple) and len(out) == 2
    logits2, feats2 = out
    assert torch.allclose(logits2, logits)
    assert torch.allclose(feats2, feats)

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and linears[-1] is model.classifier
    assert model.classifier.in_features == model.feature_dim
    assert model.classifier.out_features == num_classes
    assert torch.allclose(model.classifier(feats), logits, atol=1e-6)

    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", sorted(PARAM_RANGES))
def test_param_counts(name: str) -> None:
    lo, hi = PARAM_RANGES[name]
    n = _n_params(create(name, num_classes=10))
    assert lo <= n <= hi, f"{name}: {n} params outside [{lo}, {hi}]"


def test_digits_nets_default_single_channel_and_train_step() -> None:
    for name in ("digits_cnn_large", "digits_cnn_small"):
        model = create(name)
        first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert first_conv.in_channels == 1
        x = torch.randn(4, 1, 8, 8)
        loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())


def test_in_channels_kwarg() -> None:
    model = create("wrn16_1", in_channels=1).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_init_bn_and_conv() -> None:
    model = create("wrn16_1")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_duplicate_registration_raises() -> None:
    def resnet18() -> nn.Module:  # same name as an existing factory
        return nn.Identity()

    with pytest.raises(ValueError):
        register(resnet18)


def test_register_new_name_and_create() -> None:
    def _tmp_test_net(width: int = 3) -> nn.Module:
        return nn.Linear(width, width)

    try:
        assert register(_tmp_test_net) is _tmp_test_net
        assert "_tmp_test_net" in list_networks()
        assert create("_tmp_test_net", width=5).in_features == 5
    finally:
        registry_mod._REGISTRY.pop("_tmp_test_net", None)


def test_unknown_name_message_lists_known() -> None:
    with pytest.raises(KeyError) as exc:
        create("no_such_net")
    msg = exc.value.args[0]
    assert "\n" not in msg
    assert msg.startswith("unknown network 'no_such_net'")
    for name in list_networks():
        assert name in msg


@pytest.mark.parametrize("image_size,out_channels", [(8, 1), (32, 3)])
def test_generator_shape_and_range(image_size: int, out_channels: int) -> None:
    torch.manual_seed(0)
    gen = create("dcgan_generator", latent_dim=64, image_size=image_size, out_channels=out_channels)
    assert not isinstance(gen, Classifier)
    assert gen.latent_dim == 64
    z = torch.randn(3, 64)
    img = gen(z)
    assert img.shape == (3, out_channels, image_size, image_size)
    assert img.min() >= 0 and img.max() <= 1
    img.mean().backward()
    assert gen.fc.weight.grad is not None
    gen.eval()
    with torch.no_grad():
        assert gen(z).shape == (3, out_channels, image_size, image_size)


def test_generator_default_latent_dim() -> None:
    gen = create("dcgan_generator")
    assert gen.latent_dim == 256
    assert gen(torch.randn(2, 256)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("bad", [30, 6, 0])
def test_generator_bad_image_size(bad: int) -> None:
    with pytest.raises(ValueError) as exc:
        create("dcgan_generator", image_size=bad)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("downsamplings,size", [(1, 8), (2, 32)])
def test_patch_discriminator_scores_patches(downsamplings: int, size: int) -> None:
    disc = create("patch_discriminator", in_channels=3, base_channels=8, downsamplings=downsamplings)
    out = disc(torch.rand(2, 3, size, size))
    assert out.shape == (2, 1, size // 2**downsamplings, size // 2**downsamplings)
