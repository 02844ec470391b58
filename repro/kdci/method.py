"""``KDCI(base=...)``: any DFKD baseline gains the causal intervention without being edited.

The wrapper hands the baseline a :class:`DeconfoundedStudent` in place of the student, so the
baseline's own distillation loss is applied to the compensated prediction (paper Sec. 3.4). It
delegates synthesis and sampling to the baseline and builds the confounder dictionary from the
baseline's substitution data after a warm-up, optionally refreshing it every k epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import gin
import torch
from torch import nn

from repro.data.datasets import DataSpec
from repro.errors import UserError
from repro.kdci.dictionary import (
    FEATURE_SOURCES,
    PRIORS,
    ConfounderDictionary,
    build_dictionary,
)
from repro.kdci.intervention import ATTENTIONS, FUSIONS
from repro.kdci.model import DICTIONARY_FILE, DeconfoundedStudent
from repro.methods.base import Batch, DFKDMethod


@gin.configurable
class KDCI(DFKDMethod):
    """Wraps ``base`` with the confounder dictionary and the intervention module.

    Ablation switches (paper Sec. 4.4): ``attention='uniform'`` (random lambda),
    ``random_prototypes=True`` (randomly initialised z), ``prior='uniform'`` (P(z) removed), and
    ``num_prototypes`` (N, tuned per baseline in the paper's Fig. 4). ``name`` names the arm
    (``kdci``; ``control`` for the capacity-matched control of ``gin/kdci_control.gin``): the method
    record is ``<base>+<name>``.
    """

    def __init__(
        self,
        base: DFKDMethod = gin.REQUIRED,
        num_prototypes: int = 16,
        pca_dim: int = 32,
        feature_source: str = "penultimate",
        prior: str = "proportion",
        attention: str = "additive",
        fusion: str = "logit",
        attention_dim: int = 32,
        dictionary_samples: int = 2048,
        warmup_epochs: int = 1,
        refresh_every_epochs: int = 0,
        random_prototypes: bool = False,
        whiten: bool = True,
        seed: int = 0,
        name: str = "kdci",
    ) -> None:
        self.record_settings(locals())
        checks = [
            (feature_source in FEATURE_SOURCES, f"KDCI.feature_source = {feature_source!r}: choose {', '.join(FEATURE_SOURCES)}"),
            (prior in PRIORS, f"KDCI.prior = {prior!r}: choose {', '.join(PRIORS)}"),
            (attention in ATTENTIONS, f"KDCI.attention = {attention!r}: choose {', '.join(ATTENTIONS)}"),
            (fusion in FUSIONS, f"KDCI.fusion = {fusion!r}: choose {', '.join(FUSIONS)}"),
            (isinstance(num_prototypes, int) and num_prototypes > 0, f"KDCI.num_prototypes = {num_prototypes!r}: must be > 0"),
            (isinstance(pca_dim, int) and pca_dim > 0, f"KDCI.pca_dim = {pca_dim!r}: must be > 0"),
            (dictionary_samples >= num_prototypes, f"KDCI.dictionary_samples = {dictionary_samples} is below "
                                                   f"num_prototypes = {num_prototypes}: raise it"),
            (warmup_epochs >= 0 and refresh_every_epochs >= 0, "KDCI.warmup_epochs and refresh_every_epochs must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        self.base = base
        self.num_prototypes, self.pca_dim, self.feature_source = num_prototypes, pca_dim, feature_source
        self.prior, self.attention, self.fusion, self.attention_dim = prior, attention, fusion, attention_dim
        self.dictionary_samples, self.warmup_epochs = dictionary_samples, warmup_epochs
        self.refresh_every_epochs, self.random_prototypes, self.seed = refresh_every_epochs, random_prototypes, seed
        self.whiten = whiten
        self.builds = 0

    def setup(self, teacher: nn.Module | None, student: nn.Module, spec: DataSpec,
              device: torch.device) -> nn.Module:
        if teacher is None:
            raise UserError("KDCI needs a teacher: it builds the dictionary from teacher features")
        source_dim = teacher.feature_dim if self.feature_source == "penultimate" else teacher.num_classes
        if self.pca_dim > source_dim:
            raise UserError(f"KDCI.pca_dim = {self.pca_dim} exceeds the teacher's {source_dim}-d {self.feature_source} "
                            f"features: choose at most {source_dim}")
        # The intervention's initialisation must not consume the global RNG: baseline and KDCI runs of a
        # seed then share the generator initialisation and the data order (paired comparison).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 7919)
            self.model = DeconfoundedStudent(student, self.num_prototypes, self.pca_dim, self.attention,
                                             self.fusion, self.attention_dim).to(device)
        self.teacher, self.device, self.spec, self.student = teacher, device, spec, self.model
        return self.base.setup(teacher, self.model, spec, device)

    def on_epoch_start(self, epoch: int) -> None:
        refresh = self.refresh_every_epochs
        if epoch == self.warmup_epochs or (refresh and epoch > self.warmup_epochs
                                           and (epoch - self.warmup_epochs) % refresh == 0):
            self.rebuild_dictionary()
        self.base.on_epoch_start(epoch)

    @torch.no_grad()
    def teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's "prediction features" [B, D] of substitution images (feature_source)."""
        logits, features = self.teacher(images, return_features=True)
        return features if self.feature_source == "penultimate" else logits

    def rebuild_dictionary(self) -> ConfounderDictionary:
        """Collect substitution data from the baseline and cluster the teacher's features of it."""
        with torch.random.fork_rng(devices=[]):  # keep the baseline's data order (see setup)
            torch.manual_seed(self.seed * 1009 + self.builds)
            features = self._dictionary_features()
            dictionary = build_dictionary(features, self.num_prototypes, self.pca_dim, prior=self.prior,
                                          feature_source=self.feature_source, seed=self.seed + self.builds,
                                          whiten=self.whiten)
            if self.random_prototypes:
                # "Randomly initialised z" ablation: prototypes with the data's scale but no structure.
                generator = torch.Generator(device="cpu").manual_seed(self.seed + 31337)
                scale = ((features - dictionary.pca_mean) @ dictionary.pca_basis).std(dim=0)
                dictionary.prototypes = torch.randn(dictionary.prototypes.shape, generator=generator).to(features.device) * scale
        self.model.set_dictionary(dictionary)
        self.builds += 1
        return dictionary

    def _dictionary_features(self) -> torch.Tensor:
        """Teacher features ``[M, D]`` of up to ``dictionary_samples`` *distinct* substitution images.

        The paper clusters the teacher's features of the substitution data itself (Wang et al., CVPR 2024,
        Sec. 3.3 "confounder dictionary"; our notes: shared/docs/kdci-method.md, "Stage 1": PCA, then
        K-Means++, P(z_i) = the proportion of substitution samples in cluster i), so an image counted twice
        would weigh its cluster twice in P(z) and pull its centre. Pools and selections give each image once (``DFKDMethod.distinct_samples``), so M is capped
        at what they hold (the count used is the dictionary's ``samples``). Only when that is too few for
        N prototypes and the PCA dimension (a pool just started) are more synthesis rounds run.
        """
        needed = min(max(self.num_prototypes, self.pca_dim), self.dictionary_samples)
        features = self._distinct_features()
        while len(features) < needed:
            before = len(features)
            self.base.synthesize()
            features = self._distinct_features()
            if len(features) <= before:
                raise UserError(f"KDCI found {before} distinct substitution images, the dictionary needs {needed} "
                                "(num_prototypes, pca_dim): lower KDCI.num_prototypes / pca_dim or give the "
                                "baseline more data (a larger pool or selection)")
        return features

    def _distinct_features(self) -> torch.Tensor:
        chunks = [self.teacher_features(batch.x).float() for batch in self.base.distinct_samples(self.dictionary_samples, 512)]
        return torch.cat(chunks) if chunks else torch.empty(0)

    def synthesize(self) -> dict[str, torch.Tensor]:
        return self.base.synthesize()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.base.trainable_parameters()

    def sample(self, batch_size: int) -> Batch:
        return self.base.sample(batch_size)

    def student_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.model.last_attention = None
        terms = dict(self.base.student_loss(batch))
        weights = self.model.last_attention
        if weights is not None:
            # Entropy of lambda (log N = uniform) and how much each prototype is attended to.
            terms["kdci/attention_entropy"] = -(weights * weights.clamp_min(1e-12).log()).sum(dim=1).mean()
            terms["kdci/prototype_usage"] = weights.mean(dim=0)  # [N]: the Trainer logs one metric per entry
        return terms

    def state_dict(self) -> dict[str, Any]:
        dictionary = self.model.dictionary
        return {"base": self.base.state_dict(), "builds": self.builds,
                "dictionary": None if dictionary is None else {"tensors": dictionary.tensors(),
                                                               "metadata": dictionary.metadata()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["base"])
        self.builds = int(state["builds"])
        if state["dictionary"] is not None:
            self.model.set_dictionary(ConfounderDictionary.from_tensors(state["dictionary"]["tensors"],
                                                                        state["dictionary"]["metadata"]))

    def artefact_files(self) -> dict[str, Callable[[Path], None]]:
        files = dict(self.base.artefact_files())
        if self.model.dictionary is None:
            raise UserError("KDCI finished without building its dictionary: KDCI.warmup_epochs must be smaller "
                            "than the number of distillation epochs")
        files[DICTIONARY_FILE] = self.model.dictionary.save
        return files

    def artefact_config(self) -> dict[str, Any]:
        return {**self.base.artefact_config(), "intervention": self.model.describe()}

    def describe(self) -> dict[str, Any]:
        """``{"name": "<base>+<arm>", "base": <the baseline's record>, "kdci": <KDCI's settings>}``."""
        kdci = super().describe()
        arm = kdci.pop("name")
        base = kdci.pop("base")
        return {"name": f"{base['name']}+{arm}", "base": base, "kdci": kdci}
