"""Classifier reward ``R(x, y) = log p_phi(y | x)`` (classifier guidance, Dhariwal & Nichol 2021; docs/math.md §2.8).

The log-probability of the conditioning class under an image classifier (the Fashion-MNIST classifier of
``checkpoints/fmnist_classifier`` by default), for class-conditional pixel teachers; ``cond=None`` scores the most
likely class, ``max_y log p_phi(y | x)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fdistill.metrics.proxy import load_proxy_classifier, pad_to_classifier_size


class ClassifierReward(nn.Module):
    """``R(x, y) = log softmax(f_phi(x))_y`` for images ``x`` in [-1, 1] of shape (B, 1, 28|32, 28|32).

    Unlike the proxy-FID input (:func:`fdistill.metrics.proxy.prepare_proxy_input`) nothing is quantised, so the
    gradient reaches the generator; 28-px images are padded with the background value as the classifier was trained.
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str | None = None, device: str | torch.device = "cpu") -> ClassifierReward:
        return cls(load_proxy_classifier(path, device))

    def forward(self, x0: Tensor, cond: Tensor | None = None) -> Tensor:
        if x0.ndim != 4 or x0.shape[1] != 1 or x0.shape[-1] not in (28, 32):
            raise ValueError(f"reward.kind=classifier expects (B, 1, 28|32, 28|32) images, got {tuple(x0.shape)}")
        logp = self.classifier(pad_to_classifier_size(x0.float())).log_softmax(-1)
        if cond is None:
            return logp.max(-1).values
        return logp.gather(1, cond.long().view(-1, 1)).squeeze(1)
