"""The deployed KDCI student: backbone + intervention (attention, fusion) + confounder dictionary."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from repro.artefact import Head, register_head
from repro.kdci.dictionary import ConfounderDictionary
from repro.kdci.intervention import make_attention, make_fusion, nwgm_expectation

# The dictionary travels beside the weights in its own safetensors file of the artefact.
DICTIONARY_FILE = "confounder_dictionary.safetensors"


class DeconfoundedStudent(nn.Module):
    """Wraps a classifier so its prediction is compensated by the backdoor adjustment.

    ``forward(x)`` returns de-confounded logits [B, K] once a dictionary is set (before that, the
    backbone's own logits). ``intervention_enabled = False`` switches the intervention off *inside the
    same head*: F(z) is replaced by its prior expectation (uniform lambda, so F(z) = E_P(z)[z] for every
    sample) and still goes through the trained fusion; what changes is only the sample-specific use of
    the confounders. (Bypassing the fusion would remove trained weights too: with feature fusion the
    classifier was trained on ``W_h h + W_z F(z)``.) The dictionary lives in non-persistent buffers:
    ``state_dict()`` holds the weights only, the dictionary travels in its own file
    (``confounder_dictionary.safetensors``).
    """

    def __init__(self, backbone: nn.Module, num_prototypes: int, prototype_dim: int, attention: str = "additive",
                 fusion: str = "logit", attention_dim: int = 64) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes, self.feature_dim = backbone.num_classes, backbone.feature_dim
        self.settings = {"num_prototypes": num_prototypes, "prototype_dim": prototype_dim, "attention": attention,
                         "fusion": fusion, "attention_dim": attention_dim}
        self.attention = make_attention(attention, backbone.feature_dim, prototype_dim, attention_dim)
        self.fusion = make_fusion(fusion, backbone.feature_dim, prototype_dim, backbone.num_classes)
        self.register_buffer("prototypes", torch.zeros(num_prototypes, prototype_dim), persistent=False)
        self.register_buffer("prior", torch.zeros(num_prototypes), persistent=False)
        self.dictionary: ConfounderDictionary | None = None
        self.intervention_enabled = True
        self.last_attention: torch.Tensor | None = None

    @property
    def classifier(self) -> nn.Module:
        return self.backbone.classifier

    def set_dictionary(self, dictionary: ConfounderDictionary) -> None:
        expected = (self.settings["num_prototypes"], self.settings["prototype_dim"])
        if tuple(dictionary.prototypes.shape) != expected:
            raise ValueError(f"dictionary is {tuple(dictionary.prototypes.shape)}, the student expects {expected}")
        self.prototypes.copy_(dictionary.prototypes)
        self.prior.copy_(dictionary.prior)
        self.dictionary = dictionary.to(torch.device("cpu"))

    @property
    def active(self) -> bool:
        return self.dictionary is not None and self.intervention_enabled

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone penultimate features [B, Ds]."""
        return self.backbone.features(x)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """[B, C, H, W] -> logits [B, K] (or (logits, backbone features [B, Ds]))."""
        logits, features = self.backbone(x, return_features=True)
        if self.dictionary is not None:
            if self.intervention_enabled:
                weights = self.attention(features, self.prototypes)  # [B, N]
                self.last_attention = weights.detach()
            else:  # intervention off: lambda_i = 1/N, F(z) at its prior expectation for every sample
                weights = features.new_full((features.shape[0], self.prototypes.shape[0]), 1.0 / self.prototypes.shape[0])
            expectation = nwgm_expectation(weights, self.prototypes, self.prior)  # [B, d]
            # F(z) sums N terms weighted by P(z_i) ~ 1/N, so it is ~1/N the size of a prototype; the
            # constant N restores the prototypes' scale. A learned linear map follows, so the factor
            # changes only the conditioning of the optimisation, not what the model can express.
            expectation = expectation * self.settings["num_prototypes"]
            logits = self.fusion(logits, features, expectation, self.backbone.classifier)
        return (logits, features) if return_features else logits

    def describe(self) -> dict[str, Any]:
        return dict(self.settings)


def _attach_dictionary(model: nn.Module, settings: Mapping[str, Any], folder: Path) -> None:
    model.set_dictionary(ConfounderDictionary.load(folder / DICTIONARY_FILE, settings["num_prototypes"],
                                                   settings["prototype_dim"]))


# config.json's "intervention" record (``describe()``) is how a KDCI student is rebuilt from an artefact.
register_head("intervention", Head(wrap=lambda backbone, settings: DeconfoundedStudent(backbone, **settings),
                                   attach=_attach_dictionary))
