"""``proxy_fid``: a Frechet distance in the features of a small Fashion-MNIST classifier, cheap enough for training.

The real FID needs the 299-px Inception (about 7.5 images/s on a 2-core CPU): far too slow to watch a
distillation run. The proxy replaces the Inception by a small CNN trained on Fashion-MNIST
(``scripts/train_proxy_classifier.py``, weights and card in ``checkpoints/fmnist_classifier/``) and measures
the Frechet distance (Heusel et al. 2017, Eq. 6) between Gaussians fitted to its penultimate-layer features
(128-d, after the ReLU, the analogue of Inception's pool3) of generated and real images. This is the
"FID with a domain classifier" used for MNIST-scale models (e.g. the LeNet FID of Li et al. 2017 and many
diffusion papers' MNIST tables). Its values are **not** comparable to FID: it is named ``proxy_fid``
everywhere (metrics.jsonl, JSON results, reports) so nobody confuses the two. It is comparable across runs
that use the same classifier weights; the weights' SHA-256 prefix is in :attr:`ProxyFID.protocol`.

Protocol: images in [-1, 1] are quantised to the uint8 grid with rounding (as saved samples would be),
shown to the classifier as (N, 1, 32, 32) in [-1, 1] with 28x28 inputs zero-padded with the background
value -1 (the data loader's convention); RGB is converted to luminance (ITU-R BT.601); statistics in
float64. ``ProxyFID(...).evaluate`` also reports precision/recall in the same features (k = 3,
Kynkaanniemi et al. 2019) and ``proxy_class_tv``, the total variation between the classifier's predicted
class histogram of the samples and of the reference: a direct mode-dropping signal.

Usage inside a trainer::

    scorer = ProxyFID(reference="fashion_mnist:test", device=accelerator.device)  # reference stats once
    metrics["proxy_fid"] = scorer.score(samples)  # samples: (N, 1, 32, 32) in [-1, 1]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fdistill.data.fashion_mnist import load_fashion_mnist
from fdistill.metrics.fid import FeatureStats, ProtocolMismatchError, cache_dir, frechet_distance, precision_recall
from fdistill.metrics.inception import quantize_uint8

WEIGHTS_NAME = "model.safetensors"
ENV_WEIGHTS = "FDISTILL_PROXY_CLASSIFIER"
REPO_WEIGHTS = Path(__file__).resolve().parents[2] / "checkpoints" / "fmnist_classifier" / WEIGHTS_NAME
IMAGE_SIZE = 32


class FMNISTClassifier(nn.Module):
    """Three conv blocks (conv-BN-ReLU-maxpool, 32->16->8->4) -> Linear(feature_dim) -> ReLU -> Linear(classes).

    ``features(x)`` is the post-ReLU ``feature_dim`` vector before the classifier layer.
    """

    def __init__(self, width: int = 16, feature_dim: int = 128, num_classes: int = 10, dropout: float = 0.3) -> None:
        super().__init__()
        self.config = {"width": width, "feature_dim": feature_dim, "num_classes": num_classes, "dropout": dropout}
        chans = [1, width, 2 * width, 4 * width]
        blocks = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            blocks += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*blocks)
        self.fc = nn.Linear(4 * width * (IMAGE_SIZE // 8) ** 2, feature_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def feature_dim(self) -> int:
        return self.config["feature_dim"]

    def features(self, x: Tensor) -> Tensor:
        return F.relu(self.fc(self.body(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(self.features(x)))


def save_proxy_classifier(model: FMNISTClassifier, path: str | Path, extra: dict | None = None) -> Path:
    """safetensors with the architecture (and anything in ``extra``) as JSON metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": json.dumps(model.config), **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return path


def find_proxy_weights(path: str | Path | None = None) -> Path:
    """``path``, ``$FDISTILL_PROXY_CLASSIFIER``, or the repository's ``checkpoints/fmnist_classifier``."""
    for cand in (path, os.environ.get(ENV_WEIGHTS)):
        if cand:
            p = Path(cand).expanduser()
            p = p / WEIGHTS_NAME if p.is_dir() else p
            if not p.is_file():
                raise FileNotFoundError(f"proxy classifier weights {str(p)!r} do not exist")
            return p
    if REPO_WEIGHTS.is_file():
        return REPO_WEIGHTS
    raise FileNotFoundError(
        f"proxy classifier weights not found at {REPO_WEIGHTS} (they ship in the repository's checkpoints/, not "
        f"in a wheel): pass weights=PATH, set ${ENV_WEIGHTS}, or train them with "
        "`python scripts/train_proxy_classifier.py`"
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_proxy_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> FMNISTClassifier:
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = find_proxy_weights(path)
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
    config = json.loads(meta.get("config", "{}"))
    model = FMNISTClassifier(**config)
    model.load_state_dict(load_file(str(p)))
    return model.to(device).eval().requires_grad_(False)


def pad_to_classifier_size(x: Tensor) -> Tensor:
    """28x28 images (values in [-1, 1]) -> 32x32, padded with the background value -1 as the classifier was trained;
    32x32 images pass unchanged."""
    return F.pad(x, (2, 2, 2, 2), value=-1.0) if x.shape[-1] == 28 else x


def prepare_proxy_input(images: Tensor) -> Tensor:
    """uint8 [0, 255] or float [-1, 1] (N, 1|3, 28|32, 28|32) -> float (N, 1, 32, 32) on the uint8 grid in [-1, 1]."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"proxy_fid expects images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    if images.shape[-2:] not in ((28, 28), (32, 32)):
        raise ValueError(
            f"proxy_fid is defined for Fashion-MNIST-sized images (28x28 or 32x32), got {tuple(images.shape[-2:])}; "
            "for other data use the Inception FID (fdistill eval)"
        )
    x = images.float() if images.dtype == torch.uint8 else quantize_uint8(images).float()
    if x.shape[1] == 3:
        x = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).round()
    return pad_to_classifier_size(x / 127.5 - 1)


_REF_CACHE: dict[tuple, FeatureStats] = {}


class ProxyFID:
    """Proxy FID against a reference set, with the reference statistics computed once (memory + disk cache).

    ``reference``: ``"fashion_mnist:test"`` (default, 10k images), ``"fashion_mnist:train"`` (60k), or a tensor
    of reference images (uint8 or [-1, 1]). ``num_reference`` limits the reference to its first N images.
    """

    def __init__(
        self,
        reference: str | Tensor = "fashion_mnist:test",
        device: str | torch.device = "cpu",
        weights: str | Path | None = None,
        num_reference: int | None = None,
        batch_size: int = 1000,
        disk_cache: bool = True,
    ) -> None:
        self.weights_path = find_proxy_weights(weights)
        self.sha = _sha256(self.weights_path)[:12]
        self.device = torch.device(device)
        self.model = load_proxy_classifier(self.weights_path, self.device)
        self.batch_size = batch_size
        self.reference = reference
        self.num_reference = num_reference
        self.disk_cache = disk_cache and isinstance(reference, str)
        self.protocol = (
            f"proxy-fmnist-classifier-{self.sha}/penultimate-{self.model.feature_dim}; uint8-round; "
            "1x32x32 pad(-1) in [-1,1]; float64-stats"
        )

    @property
    def num_classes(self) -> int:
        return self.model.config["num_classes"]

    # -- features ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats, preds = [], []
        for chunk in images.split(self.batch_size):
            x = prepare_proxy_input(chunk).to(self.device)
            f = self.model.features(x)
            feats.append(f.double().cpu())
            preds.append(self.model.head(f).argmax(1).cpu())
        return torch.cat(feats), torch.cat(preds)

    def features(self, images: Tensor) -> Tensor:
        """Penultimate features (float64, CPU) of images in [-1, 1] or uint8."""
        return self._run(images)[0]

    # -- reference -----------------------------------------------------------------------------------------
    def _reference_images(self) -> Tensor:
        if isinstance(self.reference, Tensor):
            ref = self.reference
        else:
            name, _, split = self.reference.partition(":")
            if name != "fashion_mnist" or split not in ("train", "test"):
                raise ValueError(
                    f"proxy_fid reference {self.reference!r}; accepted: 'fashion_mnist:test', 'fashion_mnist:train' "
                    "or a tensor of images"
                )
            ref = load_fashion_mnist(split, pad_to=IMAGE_SIZE).images
        return ref[: self.num_reference] if self.num_reference else ref

    def _key(self) -> tuple:
        if isinstance(self.reference, str):
            return (self.sha, self.reference, self.num_reference)
        if not hasattr(self, "_tensor_digest"):  # content, not id(): ids are reused after garbage collection
            data = self.reference.detach().cpu().contiguous().numpy().tobytes()
            self._tensor_digest = hashlib.sha1(data).hexdigest()
        return (self.sha, f"tensor-{self._tensor_digest}", self.num_reference)

    def _cache_file(self) -> Path:
        name = f"{self.reference.replace(':', '_')}_{self.num_reference or 'all'}"
        return cache_dir() / f"proxy_{self.sha}_{name}.npz"

    @property
    def reference_stats(self) -> FeatureStats:
        key = self._key()
        if key not in _REF_CACHE:
            stats = None
            if self.disk_cache and self._cache_file().is_file():
                try:
                    stats = FeatureStats.load(self._cache_file(), protocol=self.protocol)
                except (ProtocolMismatchError, ValueError, OSError):
                    stats = None
            if stats is None or stats.features is None or "class_hist" not in stats.extra:
                feats, preds = self._run(self._reference_images())
                stats = FeatureStats.from_features(feats, self.protocol)
                stats.extra["class_hist"] = np.bincount(preds.numpy(), minlength=self.num_classes) / len(preds)
                if self.disk_cache:
                    with contextlib.suppress(OSError):
                        stats.save(self._cache_file())
            _REF_CACHE[key] = stats
        return _REF_CACHE[key]

    # -- scores --------------------------------------------------------------------------------------------
    def score(self, images: Tensor) -> float:
        """``proxy_fid`` of ``images`` ((N, 1, 32, 32) in [-1, 1], N >= 2; ~1-2k is a sensible size)."""
        ref = self.reference_stats
        f = self.features(images).numpy()
        return frechet_distance(f.mean(0), np.cov(f, rowvar=False), ref.mu, ref.sigma)

    def evaluate(self, images: Tensor, k: int = 3) -> dict[str, float]:
        """``proxy_fid``, ``proxy_precision``, ``proxy_recall`` (k-NN manifolds) and ``proxy_class_tv``."""
        ref = self.reference_stats
        feats, preds = self._run(images)
        f = feats.numpy()
        hist = np.bincount(preds.numpy(), minlength=self.num_classes) / len(preds)
        p, r = precision_recall(ref.features, f, k=k)
        return {
            "proxy_fid": frechet_distance(f.mean(0), np.cov(f, rowvar=False), ref.mu, ref.sigma),
            "proxy_precision": p,
            "proxy_recall": r,
            "proxy_class_tv": float(0.5 * np.abs(hist - ref.extra["class_hist"]).sum()),
        }

    @torch.no_grad()
    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        return float((self._run(images)[1] == labels.cpu()).double().mean())


def proxy_fid(images: Tensor, reference: str | Tensor = "fashion_mnist:test", device: str = "cpu") -> float:
    """One-shot ``proxy_fid`` (reference statistics are still cached for the process)."""
    return ProxyFID(reference=reference, device=device).score(images)
