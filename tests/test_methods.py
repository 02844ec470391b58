"""The plug-in contract, for every shipped method: one synthesis and one student step on tiny nets."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import gin
import pytest
import torch

from conftest import REPO
from repro import config, nets
from repro.data.datasets import DataSpec
from repro.methods.base import DFKDMethod
from repro.train.device import seed_everything
from repro.train.engine import Trainer

BASELINES = sorted((REPO / "gin/methods").glob("*.gin"))
# Every baseline alone and wrapped in KDCI (dictionary built at once, small, so the step is compensated).
METHODS = [(path,) for path in BASELINES] + [(path, REPO / "gin/kdci.gin") for path in BASELINES]
KDCI_SMALL = ["KDCI.warmup_epochs = 0", "KDCI.dictionary_samples = 64", "KDCI.num_prototypes = 4", "KDCI.pca_dim = 8"]


def _ids(files) -> str:
    return "+".join(path.stem for path in files)
SPEC = DataSpec(name="digits", num_classes=10, channels=1, image_size=8, mean=(0.3,), std=(0.37,))
CPU = torch.device("cpu")


def _tensors(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state.detach().clone()]
    if isinstance(state, dict):
        return [t for value in state.values() for t in _tensors(value)]
    if isinstance(state, (list, tuple)):
        return [t for value in state for t in _tensors(value)]
    return []


def _method(method_files: tuple[Path, ...], *bindings: str) -> DFKDMethod:
    config.parse([REPO / "gin/experiments/digits.gin", *method_files, REPO / "gin/profiles/smoke.gin"],
                 [*bindings, *KDCI_SMALL])
    return gin.query_parameter("distill.method").scoped_configurable_fn()


@pytest.mark.parametrize("method_file", METHODS, ids=_ids)
def test_one_synthesis_and_one_student_step(method_file: tuple[Path, ...]) -> None:
    seed_everything(0)
    method = _method(method_file)
    teacher, student = nets.create("digits_cnn_small"), nets.create("digits_cnn_small")
    teacher_before = [t.clone() for t in teacher.state_dict().values()]
    student_before = [p.detach().clone() for p in student.parameters()]
    model = method.setup(teacher, student, SPEC, CPU)
    assert any(module is student for module in model.modules()), "setup must train the student it was given"
    method.on_epoch_start(0)
    source_before = _tensors(method.state_dict())

    for value in method.synthesize().values():
        assert torch.isfinite(value).all()
    source_after = _tensors(method.state_dict())
    base = getattr(method, "base", method)
    if type(base).synthesize is not DFKDMethod.synthesize:  # generator weights or synthesised images moved
        assert source_before and any(not torch.equal(a, b) for a, b in zip(source_before, source_after))
    else:  # a selecting method (DFND): its substitution data is a strict subset of its pool
        assert 0 < len(base.selected) < len(base.pool_images)

    optimizer = torch.optim.SGD([*model.parameters(), *method.trainable_parameters()], lr=0.05)
    own = {name: p.detach().clone() for name, p in model.named_parameters() if not name.startswith("backbone.")}
    model.train()
    for _ in range(2):  # two steps: a zero-initialised fusion passes gradient to the attention from step 2
        terms = method.student_loss(method.sample(16))
        assert terms["loss"].requires_grad and torch.isfinite(terms["loss"])
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()

    assert any(not torch.equal(a, b.detach()) for a, b in zip(student_before, student.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.state_dict().values())), "teacher moved"
    assert all(p.grad is None for p in teacher.parameters())
    if model is not student:  # a wrapper: its own parameters (KDCI's attention and fusion) learn too
        after = dict(model.named_parameters())
        assert own and all(not torch.equal(before, after[name].detach()) for name, before in own.items())


@pytest.mark.parametrize("method_file", METHODS, ids=_ids)
def test_trainer_evaluates_the_student_the_method_trains(method_file: tuple[Path, ...]) -> None:
    seed_everything(0)
    method = _method(method_file, "DISTILL_EPOCHS = 1", "STUDENT_STEPS = 10")
    with gin.config_scope("student"):
        trainer = Trainer(device="cpu")
    teacher, student = nets.create("digits_cnn_small"), nets.create("digits_cnn_small")
    before = [p.detach().clone() for p in student.parameters()]
    trained = trainer.fit(method, student, SPEC, teacher)
    assert any(module is student for module in trained.modules())
    assert method.student is trained or any(module is method.student for module in trained.modules())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, student.parameters()))


@pytest.mark.parametrize("method_file", METHODS, ids=_ids)
def test_describe_records_every_constructor_argument_as_json(method_file: tuple[Path, ...]) -> None:
    method = _method(method_file)
    described = json.loads(json.dumps(method.describe()))  # JSON-able as it is
    stem = method_file[0].stem  # every preset file is named after its method
    if len(method_file) > 1:  # KDCI: {"name": "<base>+kdci", "base": {...}, "kdci": {...}}
        assert described["name"] == f"{stem}+kdci" and set(described) == {"name", "base", "kdci"}
        assert set(_parameters(method)) - {"base", "name"} == set(described["kdci"])  # name: the arm, in "name"
        method, described = method.base, described["base"]
    assert described["name"] == stem
    assert set(_parameters(method)) <= set(described)


def test_supervised_describe_lists_its_arguments() -> None:
    from repro.methods import Supervised

    described = Supervised(train_data=torch.utils.data.TensorDataset(torch.zeros(2)), seed=3).describe()
    assert described == {"name": "supervised", "train_data": "TensorDataset", "seed": 3, "num_workers": 0,
                         "label_smoothing": 0.0}


def test_no_method_hard_codes_an_optimiser() -> None:
    """Generator, image and head optimisers are gin-bound classes (``@generator/Adam``), as the student's is."""
    sources = [*(REPO / "repro/methods").glob("*.py"), REPO / "repro/kdci/method.py"]
    offenders = [path.name for path in sources if re.search(r"torch\.optim\.\w+\(", path.read_text())]
    assert not offenders


def _parameters(method: DFKDMethod) -> list[str]:
    return [name for name in inspect.signature(type(method).__init__).parameters if name != "self"]
