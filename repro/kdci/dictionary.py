"""Stage 1 of KDCI: the confounder dictionary (paper Sec. 3.3, "confounder dictionary").

Teacher "prediction features" of the substitution data -> PCA -> K-Means++ with N clusters. The
cluster centres are the confounders ``Z = [z_1 .. z_N]`` and the prior ``P(z_i)`` is the share of
substitution samples in cluster ``i`` (the paper's "prototype proportion"); ``uniform`` is the
ablation. Written in torch so it runs where the features are (GPU for 50k+ samples), and seeded.
Cost: O(N * m * d) per Lloyd iteration for m samples of dimension d; storage O(N * d).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from repro.errors import UserError

FEATURE_SOURCES = ("penultimate", "logits")
PRIORS = ("proportion", "uniform")
METADATA_KEY = "kdci_dictionary"  # one JSON string: see ConfounderDictionary.save


@dataclasses.dataclass
class ConfounderDictionary:
    """``prototypes`` [N, d] in PCA space, ``prior`` [N] (sums to 1), and the PCA that maps
    teacher features [.., D] into that space (``pca_mean`` [D], ``pca_basis`` [D, d])."""

    prototypes: torch.Tensor
    prior: torch.Tensor
    pca_mean: torch.Tensor
    pca_basis: torch.Tensor
    feature_source: str
    prior_kind: str
    cluster_sizes: torch.Tensor

    @property
    def num_prototypes(self) -> int:
        return int(self.prototypes.shape[0])

    @property
    def dim(self) -> int:
        return int(self.prototypes.shape[1])

    def to(self, device: torch.device) -> "ConfounderDictionary":
        return dataclasses.replace(self, **{f: getattr(self, f).to(device) for f in
                                            ("prototypes", "prior", "pca_mean", "pca_basis", "cluster_sizes")})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach().cpu().contiguous()
                for name in ("prototypes", "prior", "pca_mean", "pca_basis", "cluster_sizes")}

    def metadata(self) -> dict[str, str]:
        return {"num_prototypes": str(self.num_prototypes), "dim": str(self.dim),
                "feature_source": self.feature_source, "prior": self.prior_kind,
                "feature_dim": str(int(self.pca_mean.shape[0])),
                "samples": str(int(self.cluster_sizes.sum()))}  # M: distinct substitution images clustered

    def save(self, path: Path) -> None:
        """Write a safetensors file; N, d, feature source and prior kind go into its metadata.

        The metadata is one JSON string under one key: safetensors keeps metadata in a hash map whose
        order changes from process to process, so several keys would make identical dictionaries
        differ byte for byte (and in their sha256)."""
        from safetensors.torch import save

        from repro.io import (
            write_durably,  # the one write path: fsync'ed, full disk reported in one line
        )

        write_durably(Path(path), save(self.tensors(), metadata={METADATA_KEY: json.dumps(self.metadata(), sort_keys=True)}))

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> "ConfounderDictionary":
        return cls(prototypes=tensors["prototypes"], prior=tensors["prior"], pca_mean=tensors["pca_mean"],
                   pca_basis=tensors["pca_basis"], cluster_sizes=tensors["cluster_sizes"],
                   feature_source=metadata["feature_source"], prior_kind=metadata["prior"])

    @classmethod
    def load(cls, path: Path, num_prototypes: int | None = None, dim: int | None = None) -> "ConfounderDictionary":
        """Read a dictionary file, checking it has the N and d the model expects."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.exists():
            raise UserError(f"confounder dictionary {path} is missing: re-run the kdci stage or pull the artefact again")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            if METADATA_KEY in metadata:
                metadata = json.loads(metadata[METADATA_KEY])
        except (SafetensorError, OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            raise UserError(f"{path} is not a readable safetensors file ({exc}): re-run the kdci stage") from None
        required = {"prototypes", "prior", "pca_mean", "pca_basis", "cluster_sizes"}
        if not required <= tensors.keys() or not {"feature_source", "prior"} <= metadata.keys():
            raise UserError(f"{path} is not a confounder dictionary (needs tensors {sorted(required)} and metadata): "
                            "use the confounder_dictionary.safetensors written with the model")
        dictionary = cls.from_tensors(tensors, metadata)
        shape = tuple(dictionary.prototypes.shape)
        if len(shape) != 2:
            raise UserError(f"{path} holds prototypes of shape {shape}, not [N, d]: the file is damaged; re-run the kdci stage")
        if (num_prototypes is not None and shape[0] != num_prototypes) or (dim is not None and shape[1] != dim):
            raise UserError(f"{path} holds {shape[0]} prototypes of dimension {shape[1]} but the model expects "
                            f"{num_prototypes} x {dim}: the dictionary belongs to a different KDCI student")
        count, width = shape
        consistent = (dictionary.prior.shape == (count,) and dictionary.cluster_sizes.shape == (count,)
                      and dictionary.pca_basis.ndim == 2 and dictionary.pca_basis.shape[1] == width
                      and dictionary.pca_mean.shape == (dictionary.pca_basis.shape[0],))
        if not consistent:
            raise UserError(f"{path} has inconsistent shapes (prototypes {shape}, prior {tuple(dictionary.prior.shape)}, "
                            f"PCA mean {tuple(dictionary.pca_mean.shape)}, basis {tuple(dictionary.pca_basis.shape)}): "
                            "the file is damaged; re-run the kdci stage")
        finite = all(bool(torch.isfinite(tensor).all()) for tensor in dictionary.tensors().values())
        prior = dictionary.prior.double()
        if not finite or bool((prior < 0).any()) or abs(float(prior.sum()) - 1.0) > 1e-4:
            raise UserError(f"{path} holds non-finite values or a prior that is not a distribution: the file is "
                            "damaged; re-run the kdci stage")
        return dictionary


def pca(features: torch.Tensor, dim: int, whiten: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal axes of ``features`` [M, D]: mean [D] and basis [D, dim], signs fixed for determinism.

    Eigen-decomposition of the D x D covariance: O(M D^2 + D^3), cheap for feature sizes up to a few
    thousand and independent of how many samples there are beyond the matrix product. With
    ``whiten`` each axis is scaled to unit variance, so prototypes are O(1) whatever the teacher's
    feature scale (our choice: it conditions the attention's tanh and the fusion's learning).
    """
    mean = features.mean(dim=0)
    centred = (features - mean).double()
    covariance = centred.T @ centred / max(features.shape[0] - 1, 1)
    values, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    basis, values = vectors[:, -dim:].flip(dims=[1]), values[-dim:].flip(dims=[0])
    # An eigenvector's sign is arbitrary: make each one's largest-magnitude entry positive.
    basis = basis * torch.sign(basis.gather(0, basis.abs().argmax(dim=0, keepdim=True)))
    if whiten:
        basis = basis / values.clamp_min(1e-12).sqrt()
    return mean, basis.to(features.dtype)


def kmeans_plus_plus(points: torch.Tensor, num_clusters: int, generator: torch.Generator,
                     iterations: int = 100, tolerance: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """K-Means with K-Means++ seeding (Arthur & Vassilvitskii, 2007). ``points`` [M, d].

    Returns centres [N, d] and assignments [M]. An empty cluster is re-seeded with the point
    farthest from its centre, so exactly N non-empty clusters come back.
    """
    count = points.shape[0]
    first = torch.randint(count, (1,), generator=generator, device="cpu").item()
    centres = [points[first]]
    closest = ((points - points[first]) ** 2).sum(dim=1)
    for _ in range(1, num_clusters):
        weights = closest.clamp_min(0).double().cpu()
        if float(weights.sum()) <= 0:  # fewer distinct points than clusters
            choice = torch.randint(count, (1,), generator=generator).item()
        else:
            choice = torch.multinomial(weights / weights.sum(), 1, generator=generator).item()
        centres.append(points[choice])
        closest = torch.minimum(closest, ((points - points[choice]) ** 2).sum(dim=1))
    centre_tensor = torch.stack(centres)
    assignment = torch.zeros(count, dtype=torch.long, device=points.device)
    for _ in range(iterations):
        distances = torch.cdist(points, centre_tensor)  # [M, N]
        assignment = distances.argmin(dim=1)
        sums = torch.zeros_like(centre_tensor).index_add_(0, assignment, points)
        sizes = torch.bincount(assignment, minlength=num_clusters)
        updated = sums / sizes.clamp_min(1).unsqueeze(1).to(points.dtype)
        for empty in torch.nonzero(sizes == 0).flatten().tolist():
            far = distances.gather(1, assignment[:, None]).squeeze(1).argmax()
            updated[empty] = points[far]
            assignment[far] = empty
        shift = float(((updated - centre_tensor) ** 2).sum())
        centre_tensor = updated
        if shift <= tolerance * float((centre_tensor ** 2).sum().clamp_min(1e-12)):
            break
    assignment = torch.cdist(points, centre_tensor).argmin(dim=1)
    return centre_tensor, assignment


def build_dictionary(features: torch.Tensor, num_prototypes: int, dim: int, *, prior: str = "proportion",
                     feature_source: str = "penultimate", seed: int = 0, whiten: bool = True,
                     iterations: int = 100) -> ConfounderDictionary:
    """Teacher features [M, D] of substitution data -> a :class:`ConfounderDictionary`."""
    samples, feature_dim = features.shape
    if num_prototypes <= 0:
        raise UserError(f"KDCI.num_prototypes = {num_prototypes} is invalid: it must be a positive integer")
    if num_prototypes > samples:
        raise UserError(f"KDCI.num_prototypes = {num_prototypes} is larger than the {samples} substitution samples "
                        "collected: lower num_prototypes or raise KDCI.dictionary_samples")
    if not 0 < dim <= min(feature_dim, samples):
        raise UserError(f"KDCI.pca_dim = {dim} is invalid for {samples} samples of {feature_dim}-d {feature_source} "
                        f"features: choose 1..{min(feature_dim, samples)}")
    if prior not in PRIORS:
        raise UserError(f"KDCI.prior = {prior!r} is unknown: choose one of {', '.join(PRIORS)}")
    features = features.float()
    mean, basis = pca(features, dim, whiten)
    projected = (features - mean) @ basis
    generator = torch.Generator().manual_seed(seed)
    centres, assignment = kmeans_plus_plus(projected, num_prototypes, generator, iterations)
    sizes = torch.bincount(assignment, minlength=num_prototypes).float()
    weights = sizes / sizes.sum() if prior == "proportion" else torch.full_like(sizes, 1.0 / num_prototypes)
    return ConfounderDictionary(prototypes=centres, prior=weights, pca_mean=mean, pca_basis=basis,
                                feature_source=feature_source, prior_kind=prior, cluster_sizes=sizes)
