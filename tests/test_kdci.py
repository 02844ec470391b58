"""KDCI: dictionary (against scikit-learn), attention and NWGM properties, deployment round trip, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from repro import artefact, nets
from repro.data.datasets import DataSpec
from repro.errors import UserError
from repro.kdci.dictionary import (
    ConfounderDictionary,
    build_dictionary,
    kmeans_plus_plus,
)
from repro.kdci.intervention import (
    AdditiveAttention,
    DotProductAttention,
    UniformAttention,
    nwgm_expectation,
)
from repro.kdci.method import KDCI
from repro.kdci.model import DICTIONARY_FILE, DeconfoundedStudent
from repro.methods.generative import GenerativeDFKD
from repro.nets.spec import NetSpec

SPEC = DataSpec(name="digits", num_classes=10, channels=1, image_size=8, mean=(0.3,), std=(0.37,))


def _planted(sizes=(200, 100, 50, 50), dim=5, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(len(sizes), dim) * 20.0
    points = torch.cat([centres[i] + torch.randn(n, dim, generator=generator) for i, n in enumerate(sizes)])
    labels = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    return points, labels


def test_kmeans_matches_scikit_learn_on_planted_clusters() -> None:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    points, labels = _planted()
    centres, assignment = kmeans_plus_plus(points, 4, torch.Generator().manual_seed(0))
    reference = KMeans(n_clusters=4, init="k-means++", n_init=1, random_state=0).fit(points.numpy())
    assert adjusted_rand_score(labels.numpy(), assignment.numpy()) == 1.0
    assert adjusted_rand_score(reference.labels_, assignment.numpy()) == 1.0
    ours = sorted(centres.tolist())
    theirs = sorted(torch.tensor(reference.cluster_centers_, dtype=torch.float32).tolist())
    assert torch.allclose(torch.tensor(ours), torch.tensor(theirs), atol=1e-4)
    inertia = float(((points - centres[assignment]) ** 2).sum())
    assert inertia <= reference.inertia_ * (1 + 1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_matches_scikit_learn_inertia_on_unstructured_data(seed: int) -> None:
    """No planted clusters (the hard case for the bound-based assignment step): within 1% of
    scikit-learn's inertia, and every point on its nearest centre."""
    from sklearn.cluster import KMeans

    points = torch.randn(4000, 8, generator=torch.Generator().manual_seed(seed))
    centres, assignment = kmeans_plus_plus(points, 12, torch.Generator().manual_seed(seed))
    reference = KMeans(n_clusters=12, init="k-means++", n_init=1, random_state=seed).fit(points.numpy())
    inertia = float(((points - centres[assignment]) ** 2).sum())
    assert abs(inertia / reference.inertia_ - 1) <= 0.01
    distances = torch.cdist(points, centres)
    assert bool((distances.gather(1, assignment[:, None]).squeeze(1) <= distances.min(dim=1).values + 1e-4).all())


def test_prior_is_the_cluster_proportion_and_sums_to_one() -> None:
    points, _ = _planted()
    dictionary = build_dictionary(points, 4, 4, seed=0)
    assert torch.isclose(dictionary.prior.sum(), torch.tensor(1.0))
    assert torch.equal(dictionary.prior, dictionary.cluster_sizes / dictionary.cluster_sizes.sum())
    assert sorted(dictionary.cluster_sizes.tolist()) == [50.0, 50.0, 100.0, 200.0]
    uniform = build_dictionary(points, 4, 4, seed=0, prior="uniform")
    assert torch.allclose(uniform.prior, torch.full((4,), 0.25))


def test_dictionary_is_deterministic_under_a_seed() -> None:
    points, _ = _planted(dim=12)
    first, second = build_dictionary(points, 6, 3, seed=3), build_dictionary(points, 6, 3, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first.tensors().values(), second.tensors().values()))


@pytest.mark.parametrize("attention", [AdditiveAttention(16, 8, 12), DotProductAttention(16, 8, 12), UniformAttention()],
                         ids=["additive", "dot_product", "uniform"])
def test_attention_rows_sum_to_one(attention) -> None:
    torch.manual_seed(0)
    weights = attention(torch.randn(5, 16), torch.randn(7, 8))
    assert weights.shape == (5, 7) and (weights >= 0).all()
    assert torch.allclose(weights.sum(dim=1), torch.ones(5))


def test_uniform_attention_reduces_expectation_to_prior_weighted_mean() -> None:
    torch.manual_seed(0)
    prototypes, prior = torch.randn(4, 3), torch.tensor([0.1, 0.2, 0.3, 0.4])
    weights = UniformAttention()(torch.randn(6, 16), prototypes)
    expected = (prior[:, None] * prototypes).sum(dim=0) / 4
    assert torch.allclose(nwgm_expectation(weights, prototypes, prior), expected.expand(6, 3), atol=1e-7)


def test_gradients_reach_attention_and_fusion_not_dictionary() -> None:
    torch.manual_seed(0)
    points, _ = _planted(dim=64, sizes=(40, 40, 40, 40))
    student = DeconfoundedStudent(nets.create("digits_cnn_small"), 4, 8, fusion="feature")
    student.set_dictionary(build_dictionary(points, 4, 8))
    # The fusion starts at zero (compensation off); once trained it is not, and gradient reaches the attention.
    torch.nn.init.normal_(student.fusion.project_expectation.weight)
    student(torch.randn(8, 1, 8, 8)).square().sum().backward()
    for name, parameter in student.named_parameters():
        if not name.startswith("backbone."):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert not student.prototypes.requires_grad and not student.prior.requires_grad


def _trained_kdci_student(teacher_dir: Path) -> tuple[KDCI, torch.nn.Module, dict]:
    from repro.train.engine import Trainer

    teacher, teacher_config = artefact.load_artefact(teacher_dir)
    base = GenerativeDFKD(generator=NetSpec("dcgan_generator", {"latent_dim": 16, "base_channels": 8}),
                generator_optimizer=torch.optim.Adam, synthesis_batch_size=32)
    method = KDCI(base=base, num_prototypes=5, pca_dim=6, dictionary_samples=200, warmup_epochs=1)
    trainer = Trainer(epochs=2, steps_per_epoch=3, batch_size=32, optimizer=lambda params: torch.optim.SGD(params, lr=0.05), device="cpu")
    model = trainer.fit(method, nets.create("digits_cnn_small"), SPEC, teacher)
    config = {"role": "student", "architecture": {"name": "digits_cnn_small", "kwargs": {}}, "data": SPEC.to_dict(),
              "method": method.describe(), **method.artefact_config()}
    return method, model, config


def test_save_load_round_trip_gives_identical_predictions(teacher_dir: Path, tmp_path: Path) -> None:
    method, model, config = _trained_kdci_student(teacher_dir)
    artefact.save_artefact(tmp_path / "kdci", model, config, "", method.artefact_files())
    assert (tmp_path / "kdci" / DICTIONARY_FILE).is_file()
    loaded, loaded_config = artefact.load_artefact(tmp_path / "kdci")
    assert isinstance(loaded, DeconfoundedStudent) and loaded.active
    images = torch.randn(16, 1, 8, 8)
    assert torch.equal(model.eval()(images), loaded(images))
    assert not torch.equal(loaded(images), loaded.backbone(images)), "the intervention must change the prediction"
    dictionary = ConfounderDictionary.load(tmp_path / "kdci" / DICTIONARY_FILE)
    assert dictionary.metadata()["num_prototypes"] == "5" and dictionary.feature_source == "penultimate"
    assert loaded_config["method"]["name"] == "dafl+kdci"


def test_dictionary_of_the_wrong_shape_or_corrupt_is_a_clear_error(tmp_path: Path) -> None:
    points, _ = _planted(dim=16)
    build_dictionary(points, 4, 6).save(tmp_path / "dict.safetensors")
    with pytest.raises(UserError, match="holds 4 prototypes of dimension 6 but the model expects 8 x 6"):
        ConfounderDictionary.load(tmp_path / "dict.safetensors", num_prototypes=8, dim=6)
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00garbage")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        ConfounderDictionary.load(tmp_path / "corrupt.safetensors")
    with pytest.raises(UserError, match="is missing"):
        ConfounderDictionary.load(tmp_path / "absent.safetensors")


def test_more_prototypes_than_samples_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="num_prototypes = 50 is larger than the 20 substitution samples"):
        build_dictionary(torch.randn(20, 8), 50, 4)
    with pytest.raises(UserError, match="num_prototypes"):
        KDCI(base=None, num_prototypes=0)


def test_bench_measures_three_arms_memory_per_round_and_the_dictionary_beside_sklearn() -> None:
    from conftest import REPO
    from repro import config
    from repro.pipeline import bench

    gin_dir = REPO / "gin"
    config.parse([gin_dir / "experiments/digits.gin", gin_dir / "methods/dafl.gin", gin_dir / "kdci.gin",
                  gin_dir / "profiles/smoke.gin", gin_dir / "bench.gin"],
                 ["bench_kdci_overhead.steps = 4", "bench_kdci_overhead.warmup_steps = 1",
                  "bench_kdci_overhead.batch_size = 16", "bench_kdci_overhead.synthesis_rounds = 3",
                  "KDCI.dictionary_samples = 64", "bench_kdci_overhead.pin_check = False"])
    result = bench.bench_kdci_overhead()
    assert result["student_step_s"] > 0 and result["kdci_step_s"] > 0 and result["minimal_step_s"] > 0
    assert result["kdci_overhead_pct"] == pytest.approx(100 * (result["kdci_step_s"] / result["student_step_s"] - 1))
    assert result["student_vs_minimal"] == pytest.approx(result["student_step_s"] / result["minimal_step_s"])
    assert len(result["peak_memory_mib_rounds"]) == 4  # the uncounted first round and three timed ones
    assert result["peak_memory_mib_first"] == result["peak_memory_mib_rounds"][0] > 0
    assert result["method"] == "dafl" and result["synthesis_round_s"] > 0
    assert "minimal torch loop" in bench.format_result(result)

    dictionary = bench.bench_dictionary(sizes=(600,), feature_dim=24, num_prototypes=4, pca_dim=6, repeats=1)
    row = dictionary["600"]
    assert row["dictionary_build_s"] > 0 and row["sklearn_dictionary_build_s"] > 0
    assert row["inertia_ratio"] == pytest.approx(1.0, abs=0.02)  # the same clustering quality as scikit-learn

    report = {"platform": {}, "profile": "smoke", "experiment": "digits", "methods": {"dafl": result},
              "dictionary": dictionary, "reproducible_mode": None}
    markdown = bench.format_report(report)
    assert "| dafl |" in markdown and "| 600 | reproducible" in markdown
    met = bench.targets(report)
    assert met["memory_flat"] == (result["peak_memory_mib_last"] <= 1.05 * result["peak_memory_mib_first"])


def test_bench_writes_json_and_markdown_only_with_params(tmp_path: Path) -> None:
    from conftest import run_cli

    done = run_cli("bench", "--gin", "gin/experiments/digits.gin", "--json", str(tmp_path / "b.json"))
    assert done.returncode == 2 and "give --params params.yaml" in done.stderr
    done = run_cli("bench", "--params", "params.yaml", "--json", str(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith("error:") and "--json file" in done.stderr
    assert not list(tmp_path.iterdir())


def test_dictionary_file_is_byte_identical_across_saves(tmp_path: Path) -> None:
    # Same dictionary -> same bytes, so artefact digests (config.json, dvc.lock, Hub checksums) are reproducible.
    import subprocess
    import sys

    dictionary = build_dictionary(torch.randn(300, 12, generator=torch.Generator().manual_seed(0)), 5, 4, seed=0)
    dictionary.save(tmp_path / "a.safetensors")
    script = ("import torch, sys; from repro.kdci.dictionary import ConfounderDictionary as D; "
              "D.load(sys.argv[1]).save(sys.argv[2])")
    for name in ("b", "c"):  # other processes: safetensors' metadata map is ordered per process
        subprocess.run([sys.executable, "-c", script, str(tmp_path / "a.safetensors"), str(tmp_path / f"{name}.safetensors")],
                       check=True)
    first = (tmp_path / "a.safetensors").read_bytes()
    assert (tmp_path / "b.safetensors").read_bytes() == first == (tmp_path / "c.safetensors").read_bytes()
    loaded = ConfounderDictionary.load(tmp_path / "b.safetensors", 5, 4)
    assert loaded.metadata() == dictionary.metadata() and torch.equal(loaded.prototypes, dictionary.prototypes)


def test_intervention_off_keeps_the_head_and_uses_the_prior_expectation(teacher_dir: Path, tmp_path: Path) -> None:
    from repro.kdci.intervention import nwgm_expectation

    _, model, _ = _trained_kdci_student(teacher_dir)
    model.eval()
    images = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        logits, features = model.backbone(images, return_features=True)
        count = model.prototypes.shape[0]
        uniform = torch.full((16, count), 1.0 / count)
        expected = model.fusion(logits, features, nwgm_expectation(uniform, model.prototypes, model.prior) * count,
                                model.backbone.classifier)
        model.intervention_enabled = False
        off = model(images)
        model.intervention_enabled = True
        on = model(images)
    assert torch.equal(off, expected) and not torch.equal(off, on)
    # the prior expectation is the same vector for every sample: F(z) = sum_i P(z_i) z_i (near 0 here: the
    # proportion-weighted mean of K-Means centroids is the mean of the centred PCA features)
    assert torch.allclose(nwgm_expectation(uniform, model.prototypes, model.prior)[0] * count,
                          (model.prior[:, None] * model.prototypes).sum(0), atol=1e-6)


def test_control_has_the_same_head_and_an_uninformative_dictionary(teacher_dir: Path) -> None:
    import gin

    from repro import config

    teacher, _ = artefact.load_artefact(teacher_dir)
    counts = {}
    for arm in ("kdci", "kdci_control"):
        config.parse(["gin/experiments/digits.gin", "gin/methods/dafl.gin", f"gin/{arm}.gin", "gin/profiles/smoke.gin"])
        method = gin.query_parameter("distill.method").scoped_configurable_fn()
        model = method.setup(teacher, nets.create("digits_cnn_small"), SPEC, torch.device("cpu"))
        counts[arm] = sum(p.numel() for p in model.parameters())
        dictionary = method.rebuild_dictionary()
        if arm == "kdci_control":
            assert method.describe()["name"] == "dafl+control"
            assert torch.allclose(dictionary.prior, torch.full_like(dictionary.prior, 1 / dictionary.prior.numel()))
    assert counts["kdci"] == counts["kdci_control"]
