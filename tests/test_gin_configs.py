"""Every shipped .gin file parses and builds its components (with small overrides)."""

from __future__ import annotations

from pathlib import Path

import gin
import pytest

from conftest import REPO
from repro import config
from repro.data.datasets import RealDataset
from repro.errors import UserError
from repro.methods.base import DFKDMethod
from repro.train.engine import Trainer

# The digits default and one CIFAR pair cross every method and profile here; every paper cell
# (every experiment x method x paper profile, on FakeImages) is built by tests/test_paper_profiles.py.
EXPERIMENTS = [REPO / "gin/experiments/digits.gin", REPO / "gin/experiments/cifar10_wrn40_2-wrn16_1.gin"]
METHODS = sorted((REPO / "gin/methods").glob("*.gin"))
PROFILES = sorted((REPO / "gin/profiles").glob("*.gin"))
DATA = sorted((REPO / "gin/data").glob("*.gin"))
PAIRS = sorted((REPO / "gin/pairs").glob("*.gin"))


def _build(name: str):
    return gin.query_parameter(name).scoped_configurable_fn()


def _check_components(dataset: RealDataset | None = None) -> None:
    dataset = dataset or _build("train_teacher.dataset")
    spec = dataset.spec
    for key in ("train_teacher.network", "distill.student"):
        net = _build(key).build(num_classes=spec.num_classes, in_channels=spec.channels)
        assert net.num_classes == spec.num_classes
    assert isinstance(_build("distill.method"), DFKDMethod)
    for scope in ("teacher", "student"):
        with gin.config_scope(scope):
            trainer = Trainer()
        assert trainer.epochs > 0 and trainer.batch_size > 0


EXTRAS = {"baseline": [], "kdci": [REPO / "gin/kdci.gin"], "bench": [REPO / "gin/kdci.gin", REPO / "gin/bench.gin"]}


@pytest.mark.parametrize("extra", EXTRAS, ids=str)
@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("method", METHODS, ids=lambda p: p.stem)
@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_method_profile_builds(experiment: Path, method: Path, profile: Path, extra: str) -> None:
    files = [experiment, method, *EXTRAS[extra][:1], profile, *EXTRAS[extra][1:]]
    config.parse(files)
    _check_components()
    if extra == "bench":
        assert isinstance(_build("bench_kdci_overhead.wrapped"), DFKDMethod)


def test_every_ablation_variant_applies_on_top_of_kdci() -> None:
    from repro.pipeline import ablate

    config.parse([REPO / "gin/ablations.gin"])
    variants = ablate.ablation_variants()
    assert {"random_lambda", "random_z", "no_prior"} <= set(variants)
    for bindings in variants.values():
        config.parse([EXPERIMENTS[0], METHODS[0], REPO / "gin/kdci.gin", PROFILES[0]], bindings)
        assert isinstance(_build("distill.method"), DFKDMethod)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p.stem)
@pytest.mark.parametrize("data", DATA, ids=lambda p: p.stem)
def test_every_data_and_pair_file_parses(data: Path, pair: Path, tmp_path: Path) -> None:
    # Image-folder datasets need a folder: an empty train/val layout is enough to construct them.
    for sub in ("train", "val"):
        (tmp_path / sub).mkdir()
    config.parse([REPO / "gin/base.gin", data, pair, METHODS[0], REPO / "gin/profiles/smoke.gin"],
                 [f"ImageFolderDataset.root = '{tmp_path}'", "CIFAR10.download = False", "CIFAR100.download = False"])
    spec = _build("train_teacher.dataset").spec
    # Build the pair at the dataset's class count without allocating full ImageNet-size inputs.
    for key in ("train_teacher.network", "distill.student"):
        spec_net = _build(key)
        assert spec_net.name
    if spec.image_size <= 32:
        _check_components()


def test_unknown_name_and_bad_syntax_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="Trainer.*parameter named 'epoch'"):
        config.parse(EXPERIMENTS[:1], ["student/Trainer.epoch = 3"])
    bad = tmp_path / "bad.gin"
    bad.write_text("Trainer.epochs = (3\n")
    with pytest.raises(UserError, match="gin syntax error"):
        config.parse([bad])
    with pytest.raises(UserError, match="does not exist.*dafl"):
        config.parse([REPO / "gin/methods/dafll.gin"])
    for error in (UserError("x"),):
        assert "\n" not in str(error)


def test_bad_values_are_rejected_with_the_setting_named() -> None:
    config.parse([EXPERIMENTS[0], METHODS[0], PROFILES[0]], ["student/Trainer.batch_size = 0"])
    with gin.config_scope("student"), pytest.raises(UserError, match="batch_size = 0"):
        Trainer()


def test_a_file_included_twice_is_not_a_loop(tmp_path: Path) -> None:
    """Two files may include the same one (every experiment includes gin/base.gin); only a circle is refused."""
    shared = tmp_path / "shared.gin"
    shared.write_text("SEED = 3\n")
    for name in ("a", "b"):
        (tmp_path / f"{name}.gin").write_text(f"include '{shared}'\n")
    config.parse([EXPERIMENTS[0], tmp_path / "a.gin", tmp_path / "b.gin"])
    assert gin.query_parameter("%SEED") == 3
    (tmp_path / "c.gin").write_text(f"include '{tmp_path / 'a.gin'}'\ninclude '{tmp_path / 'c.gin'}'\n")
    with pytest.raises(UserError, match=r"include each other in a loop \(.*c\.gin -> .*c\.gin\)"):
        config.parse([tmp_path / "c.gin"])


@pytest.mark.parametrize("seed, accepted", [(0, True), (config.MAX_SEED, True), (config.MAX_SEED + 1, False),
                                            (-1, False), ("'0'", False), (2.0, False)])
def test_seed_range_is_params_yaml_rule(seed, accepted: bool) -> None:
    bindings = [f"SEED = {seed}"]
    if accepted:
        config.parse(EXPERIMENTS[:1], bindings)
        assert gin.query_parameter("%SEED") == seed
    else:
        with pytest.raises(UserError, match=r"^SEED = .* is not a seed: bind an integer from 0 to 4294967295"):
            config.parse(EXPERIMENTS[:1], bindings)


def test_every_shipped_seed_is_valid() -> None:
    """The seed check reads every binding named seed/*_seed: the shipped files (and the sweep's seeds) pass."""
    config.parse([EXPERIMENTS[1], REPO / "gin/methods/deepinv.gin", REPO / "gin/kdci.gin", PROFILES[0],
                  REPO / "gin/shift_sweep.gin", REPO / "gin/ablations.gin"])
