"""Trainer: resume after an interruption gives the uninterrupted result; NaN stops with a message."""

from __future__ import annotations

from pathlib import Path

import gin
import pytest
import torch

from conftest import REPO
from repro import artefact, config
from repro.data.datasets import DataSpec
from repro.errors import TrainingDiverged, UserError
from repro.methods.base import Batch, DFKDMethod
from repro.train import resume
from repro.train.device import seed_everything
from repro.train.engine import Trainer

DAFL_SMOKE = [REPO / "gin/experiments/digits.gin", REPO / "gin/methods/dafl.gin", REPO / "gin/profiles/smoke.gin"]
BINDINGS = ["DISTILL_EPOCHS = 3", "student/Trainer.steps_per_epoch = 4", "student/Trainer.student_steps_per_round = 2"]


class _KilledAt(DFKDMethod):
    """Delegates to a real method and interrupts after ``limit`` samples, as a kill would."""

    def __init__(self, inner: DFKDMethod, limit: int) -> None:
        self.inner, self.limit, self.calls = inner, limit, 0

    def setup(self, teacher, student, spec, device):
        return self.inner.setup(teacher, student, spec, device)

    def on_epoch_start(self, epoch: int) -> None:
        self.inner.on_epoch_start(epoch)

    def synthesize(self):
        return self.inner.synthesize()

    def sample(self, batch_size: int) -> Batch:
        self.calls += 1
        if self.calls > self.limit:
            raise KeyboardInterrupt
        return self.inner.sample(batch_size)

    def student_loss(self, batch):
        return self.inner.student_loss(batch)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def _run(teacher_dir: Path, ckpt: Path | None, kill_after: int | None = None,
         kdci: bool = False) -> dict[str, torch.Tensor]:
    files = DAFL_SMOKE[:2] + [REPO / "gin/kdci.gin"] * kdci + DAFL_SMOKE[2:]
    config.parse(files, BINDINGS + ["KDCI.dictionary_samples = 128", "KDCI.num_prototypes = 4", "KDCI.pca_dim = 8"])
    teacher, teacher_config = artefact.load_artefact(teacher_dir)
    spec = DataSpec.from_dict(teacher_config["data"])
    seed_everything(0)
    student = gin.query_parameter("distill.student").scoped_configurable_fn().build(num_classes=10, in_channels=1)
    method = gin.query_parameter("distill.method").scoped_configurable_fn()
    if kill_after is not None:
        method = _KilledAt(method, kill_after)
    with gin.config_scope("student"):
        trainer = Trainer(device="cpu")
    model = trainer.fit(method, student, spec, teacher, checkpoint_path=ckpt, fingerprint="same")
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    for name in ("prototypes", "prior"):  # a KDCI student's dictionary must survive the resume too
        if hasattr(model, name):
            state[name] = getattr(model, name).clone()
    return state


@pytest.mark.parametrize("kdci", [False, True], ids=["dafl", "dafl+kdci"])
def test_resume_after_interruption_matches_uninterrupted_run(teacher_dir: Path, tmp_path: Path, kdci: bool) -> None:
    reference = _run(teacher_dir, None, kdci=kdci)
    ckpt = tmp_path / "last.pt"
    with pytest.raises(KeyboardInterrupt):
        _run(teacher_dir, ckpt, kill_after=10, kdci=kdci)  # dies in epoch 3 (4 samples per epoch)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    resumed = _run(teacher_dir, ckpt, kdci=kdci)
    assert reference.keys() == resumed.keys()
    for name in reference:
        assert torch.equal(reference[name], resumed[name]), name


class _Exploding(DFKDMethod):
    def sample(self, batch_size: int) -> Batch:
        return Batch(torch.randn(batch_size, 1, 8, 8))

    def student_loss(self, batch: Batch):
        return {"loss": self.student(batch.x).sum() * float("nan")}


def test_nan_loss_stops_with_method_and_step(tmp_path: Path) -> None:
    from repro import nets

    trainer = Trainer(epochs=2, steps_per_epoch=2, batch_size=4, optimizer=torch.optim.SGD, device="cpu")
    spec = DataSpec("digits", 10, 1, 8, (0.3,), (0.37,))
    with pytest.raises(TrainingDiverged, match=r"_exploding: student loss became non-finite at epoch 1, step 1"):
        trainer.fit(_Exploding(), nets.create("digits_cnn_small"), spec, checkpoint_path=tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


def test_corrupt_checkpoint_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        resume.load_training_state(bad, "x")


class _Scaled(DFKDMethod):
    """A student loss scaled by ``factor``: its gradient norm is as large as we like."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def sample(self, batch_size: int) -> Batch:
        return Batch(torch.randn(batch_size, 1, 8, 8, generator=torch.Generator().manual_seed(1)))

    def student_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        loss = self.factor * self.student(batch.x).square().mean()
        return {"loss": loss}


@pytest.mark.parametrize("factor", [1e-3, 1e6], ids=["under the bound", "over the bound"])
def test_max_grad_norm_bounds_each_update_and_leaves_small_ones_bit_identical(factor: float) -> None:
    from repro import nets

    spec = DataSpec("digits", 10, 1, 8, (0.3,), (0.37,))
    weights = {}
    for bound in (None, 1.0):
        seed_everything(0)
        student = nets.create("digits_cnn_small")
        before = [p.detach().clone() for p in student.parameters()]
        trainer = Trainer(epochs=1, steps_per_epoch=1, batch_size=4, optimizer=torch.optim.SGD, device="cpu",
                          max_grad_norm=bound)
        trained = trainer.fit(_Scaled(factor), student, spec)
        moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(trained.parameters(), before)])
        weights[bound] = moved
    if factor < 1:  # the gradient norm is below 1: clipping multiplies it by exactly 1.0
        assert torch.equal(weights[None], weights[1.0])
    else:  # SGD's default lr 1e-3 times a gradient of norm <= 1
        assert float(weights[1.0].norm()) <= 1e-3 * (1 + 1e-4) < float(weights[None].norm())


@pytest.mark.parametrize("bound", [0, -1.0, float("inf"), True, "10"])
def test_max_grad_norm_must_be_a_positive_number(bound) -> None:
    with pytest.raises(UserError, match="Trainer.max_grad_norm"):
        Trainer(epochs=1, steps_per_epoch=1, batch_size=4, optimizer=torch.optim.SGD, device="cpu", max_grad_norm=bound)
