"""What the BN-statistics hooks hold does not grow across synthesis steps and rounds (issue 16).

DeepInversion and Fast once kept every step's per-sample instance means (and the autograd graph behind
them) for the whole run, which only CMI reads: memory grew without bound. The hooks' own count of held
tensors is the measure here, so the test is exact and does not depend on the allocator."""

from __future__ import annotations

import gin
import pytest
import torch

from conftest import REPO
from repro import config, nets
from repro.data.datasets import DataSpec
from repro.methods.inversion import BNStatistics
from repro.train.device import seed_everything

SPEC = DataSpec(name="digits", num_classes=10, channels=1, image_size=8, mean=(0.3,), std=(0.37,))
# Every shipped method whose synthesis runs the teacher under BN-statistics hooks.
HOOKED = ["deepinv", "cmi", "fast", "fast2", "dfq"]


def _hooks(method) -> list[BNStatistics]:
    return [value for value in vars(method).values() if isinstance(value, BNStatistics)]


@pytest.mark.parametrize("name", HOOKED)
def test_hooks_hold_nothing_between_synthesis_rounds(name: str) -> None:
    seed_everything(0)
    config.parse([REPO / "gin/experiments/digits.gin", REPO / f"gin/methods/{name}.gin",
                  REPO / "gin/profiles/smoke.gin"])
    method = gin.query_parameter("distill.method").scoped_configurable_fn()
    method.setup(nets.create("digits_cnn_small"), nets.create("digits_cnn_small"), SPEC, torch.device("cpu"))
    method.on_epoch_start(0)
    hooks = _hooks(method)
    assert hooks, f"{name} should synthesise under BN-statistics hooks"
    held = []
    for _ in range(4):
        method.synthesize()
        held.append(sum(hook.held() for hook in hooks))
    assert held == [0, 0, 0, 0], f"{name}: the hooks hold {held} tensors after successive rounds"
    # Only CMI asks for per-sample instance means; the others never record them.
    assert all(hook.instance_means == (name == "cmi") for hook in hooks)


def test_instance_means_are_recorded_only_when_asked_for() -> None:
    net = nets.create("digits_cnn_small")
    plain, with_means = BNStatistics(net), BNStatistics(net, instance_means=True)
    plain.active = with_means.active = True
    for _ in range(3):  # three forwards whose statistics are then used and dropped, as a synthesis step does
        net(torch.randn(4, 1, 8, 8))
        assert len(plain.instance) == 0 and len(with_means.instance) == len(with_means.layers)
        plain.loss(), with_means.loss()
        with_means.instance_features()
        assert plain.held() == 0 and with_means.held() == 0
    with pytest.raises(RuntimeError, match="instance_means"):
        plain.instance_features()
