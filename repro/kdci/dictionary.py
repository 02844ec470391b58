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
import math
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
    # In float64, as the committed results were built. A float32 product (what scikit-learn's
    # covariance_eigh does) halves the time at 50k x 512 and is within 4e-7 of it, relative; it would
    # change the committed KDCI students' bits (eigenvectors of near-equal eigenvalues turn with it).
    centred = (features - mean).double()
    covariance = centred.T @ centred / max(features.shape[0] - 1, 1)
    values, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    basis, values = vectors[:, -dim:].flip(dims=[1]), values[-dim:].flip(dims=[0])
    # An eigenvector's sign is arbitrary: make each one's largest-magnitude entry positive.
    basis = basis * torch.sign(basis.gather(0, basis.abs().argmax(dim=0, keepdim=True)))
    if whiten:
        basis = basis / values.clamp_min(1e-12).sqrt()
    return mean, basis.to(features.dtype)


def _squared_distances(points: torch.Tensor, points_norm: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``[M, N]`` squared Euclidean distances as ``|x|^2 - 2 x.c + |c|^2``: one matrix product instead of
    ``cdist``'s pairwise differences (half the time of a Lloyd iteration at 50k points; issue 16).
    Clamped at 0, since the expansion can round slightly below it for a point on its centre."""
    return (points_norm[:, None] - 2 * points @ centres.T + (centres * centres).sum(dim=1)[None, :]).clamp_min_(0)


def _seed_centres(points: torch.Tensor, points_norm: torch.Tensor, num_clusters: int,
                  generator: torch.Generator) -> torch.Tensor:
    """Greedy K-Means++ seeding: each new centre is the best (lowest potential) of a few candidates drawn
    with probability proportional to the squared distance to the nearest centre chosen so far.

    Arthur & Vassilvitskii (2007) draw one candidate; drawing ``2 + ln N`` and keeping the best is the
    "greedy" variant they also describe, the one scikit-learn uses (``sklearn.cluster._kmeans.
    _kmeans_plusplus``, ``n_local_trials = 2 + int(np.log(n_clusters))``): better seeds, fewer iterations.
    """
    count = points.shape[0]
    trials = 2 + int(math.log(num_clusters))
    first = torch.randint(count, (1,), generator=generator, device="cpu").item()
    chosen = [first]
    closest = _squared_distances(points, points_norm, points[first:first + 1]).squeeze(1)
    for _ in range(1, num_clusters):
        weights = closest.double().cpu()
        total = float(weights.sum())
        if total <= 0:  # fewer distinct points than clusters
            candidates = torch.randint(count, (trials,), generator=generator)
        else:
            candidates = torch.multinomial(weights / total, trials, replacement=True, generator=generator)
        candidates = candidates.to(points.device)
        # [M, trials]: each candidate's effect on every point's nearest distance; keep the lowest sum.
        candidate_closest = torch.minimum(closest[:, None], _squared_distances(points, points_norm, points[candidates]))
        best = int(candidate_closest.double().sum(dim=0).argmin())
        chosen.append(int(candidates[best]))
        closest = candidate_closest[:, best]
    return points[torch.tensor(chosen, device=points.device)].clone()


def _nearest_two(points: torch.Tensor, points_norm: torch.Tensor,
                 centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each point [M, d]: its nearest centre [M], the distance to it [M] and to the second nearest [M]."""
    squared = _squared_distances(points, points_norm, centres)
    nearest_squared, nearest = squared.min(dim=1)
    if centres.shape[0] == 1:
        return nearest, nearest_squared.sqrt_(), torch.full_like(points_norm, math.inf)
    second_squared = squared.scatter_(1, nearest[:, None], math.inf).min(dim=1).values
    return nearest, nearest_squared.sqrt_(), second_squared.sqrt_()


def _centre_sums(points: torch.Tensor, assignment: torch.Tensor, num_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cluster: the sum of its points [N, d] and its size [N] (float)."""
    sums = points.new_zeros(num_clusters, points.shape[1]).index_add_(0, assignment, points)
    return sums, torch.bincount(assignment, minlength=num_clusters).to(points.dtype)


def kmeans_plus_plus(points: torch.Tensor, num_clusters: int, generator: torch.Generator,
                     iterations: int = 300, tolerance: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """K-Means (Lloyd) with greedy K-Means++ seeding (Arthur & Vassilvitskii, 2007). ``points`` [M, d].

    Returns centres [N, d] and assignments [M] (each point's nearest centre). Stops when no assignment
    changes, or when the centres move (sum of squared shifts) by at most ``tolerance`` x the mean
    per-dimension variance of the points, or after ``iterations``: scikit-learn's ``KMeans`` criteria and
    defaults (``tol=1e-4``, ``max_iter=300``; ``sklearn.cluster._kmeans._tolerance`` and
    ``_kmeans_single_lloyd``), so the two are compared on the same terms. An empty cluster is re-seeded
    with the point farthest from its centre, so exactly N non-empty clusters come back.

    The assignment step is Hamerly's ("Making k-means even faster", SDM 2010): each point keeps an
    upper bound on the distance to its centre and a lower bound on the distance to any other; after
    the centres move, only points whose bounds no longer separate are measured again, and the cluster
    sums change only by the points that moved. The result is Lloyd's (bounds only skip distances that
    cannot change the nearest centre; a small margin covers float rounding), at a fraction of a full
    pass per iteration once the centres settle.
    """
    points_norm = (points * points).sum(dim=1)
    centres = _seed_centres(points, points_norm, num_clusters, generator)
    threshold = tolerance * float(points.var(dim=0, unbiased=False).mean())
    margin = 1e-5 * float(points_norm.max().sqrt())  # rounding of the |x|^2 - 2 x.c + |c|^2 expansion
    assignment, upper, lower = _nearest_two(points, points_norm, centres)
    sums, sizes = _centre_sums(points, assignment, num_clusters)
    converged = False
    for _ in range(iterations):
        if bool((sizes == 0).any()):
            for empty in torch.nonzero(sizes == 0).flatten().tolist():
                far = int(((points - centres[assignment]) ** 2).sum(dim=1).argmax())  # farthest from its centre
                centres[empty] = points[far]  # the new cluster's mean is that point
                assignment[far] = empty
                upper[far], lower[far] = 0.0, 0.0  # on its centre; 0 is a valid lower bound for the rest
            sums, sizes = _centre_sums(points, assignment, num_clusters)
        updated = sums / sizes.clamp_min(1).unsqueeze(1)
        moved = (updated - centres).norm(dim=1)  # [N]
        centres = updated
        if float((moved ** 2).sum()) <= threshold:
            break
        # Bounds after the move: a point's centre moved by moved[a]; any other by at most the largest
        # move among the others (the second largest where the point's own centre moved most).
        upper += moved.index_select(0, assignment)
        if num_clusters > 1:
            largest, second = moved.topk(2).values
            lower -= torch.where(assignment == moved.argmax(), second, largest)
            separation = torch.cdist(centres, centres).fill_diagonal_(math.inf).min(dim=1).values / 2
            bound = torch.maximum(separation.index_select(0, assignment), lower).sub_(margin)
        else:
            bound = torch.full_like(upper, math.inf)
        suspects = torch.nonzero(upper > bound).flatten()
        if not len(suspects):
            converged = True
            break
        chosen = points.index_select(0, suspects)
        nearest, near, second_near = _nearest_two(chosen, points_norm.index_select(0, suspects), centres)
        before = assignment.index_select(0, suspects)
        moving = torch.nonzero(nearest != before).flatten()
        upper.index_copy_(0, suspects, near)
        lower.index_copy_(0, suspects, second_near)
        if not len(moving):
            converged = True  # the centres the next update would give are the ones we have
            break
        assignment.index_copy_(0, suspects, nearest)
        # The sums change by the points that changed cluster only.
        movers = chosen.index_select(0, moving)
        sums.index_add_(0, nearest.index_select(0, moving), movers).index_add_(0, before.index_select(0, moving), movers,
                                                                               alpha=-1)
        ones = torch.ones(len(moving), dtype=sizes.dtype, device=sizes.device)
        sizes.index_add_(0, nearest.index_select(0, moving), ones).index_add_(0, before.index_select(0, moving), ones,
                                                                              alpha=-1)
    if not converged:  # stopped by the tolerance or the cap: each point on its nearest final centre, as scikit-learn
        return centres, _squared_distances(points, points_norm, centres).argmin(dim=1)
    # Converged: the centres are the means of their clusters, recomputed exactly (the running sums
    # above carry the float rounding of many small updates).
    sums, sizes = _centre_sums(points, assignment, num_clusters)
    return sums / sizes.clamp_min(1).unsqueeze(1), assignment


def build_dictionary(features: torch.Tensor, num_prototypes: int, dim: int, *, prior: str = "proportion",
                     feature_source: str = "penultimate", seed: int = 0, whiten: bool = True,
                     iterations: int = 300) -> ConfounderDictionary:
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
