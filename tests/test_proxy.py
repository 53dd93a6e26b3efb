"""``proxy_fid``: the shipped Fashion-MNIST classifier, its input protocol and the trainer-facing ProxyFID API."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fdistill.metrics import proxy as proxymod
from fdistill.metrics.fid import FeatureStats
from fdistill.metrics.proxy import ProxyFID, find_proxy_weights, load_proxy_classifier, prepare_proxy_input

pytestmark = pytest.mark.skipif(not proxymod.REPO_WEIGHTS.is_file(), reason="checkpoints/fmnist_classifier missing")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(proxymod, "_REF_CACHE", {})


@pytest.fixture(scope="module")
def fmnist():
    from fdistill.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist("test"), load_fashion_mnist("train")


def test_input_protocol():
    x28 = torch.rand(3, 1, 28, 28) * 2 - 1
    x = prepare_proxy_input(x28)
    assert x.shape == (3, 1, 32, 32)
    assert torch.all(x[..., :2, :] == -1) and torch.all(x[..., :, -2:] == -1)  # background padding
    u = ((x28 + 1) * 127.5).round().to(torch.uint8)
    torch.testing.assert_close(prepare_proxy_input(u), x)  # uint8 and float land on the same grid
    rgb = prepare_proxy_input(x28.expand(-1, 3, -1, -1))
    torch.testing.assert_close(rgb, x, atol=1 / 127.5, rtol=0)
    with pytest.raises(ValueError, match="Fashion-MNIST-sized"):
        prepare_proxy_input(torch.zeros(2, 3, 64, 64))


def test_shipped_classifier_is_accurate(fmnist):
    test, _ = fmnist
    model = load_proxy_classifier()
    with torch.no_grad():
        pred = model(test.images[:2000]).argmax(1)
    assert (pred == test.labels[:2000]).float().mean() > 0.88
    assert sum(p.numel() for p in model.parameters()) < 500_000


def test_proxy_fid_orders_real_and_fake(fmnist):
    test, train = fmnist
    scorer = ProxyFID(reference=test.images[:2000], disk_cache=False)
    t0 = time.perf_counter()
    real = scorer.score(train.images[:1000])
    seconds = time.perf_counter() - t0
    blurred = torch.nn.functional.avg_pool2d(train.images[:1000], 3, 1, 1)
    noise = torch.rand(1000, 1, 32, 32) * 2 - 1
    collapsed = train.images[:1].expand(1000, -1, -1, -1) + 0.02 * torch.randn(1000, 1, 32, 32)
    scores = {"real": real, "blurred": scorer.score(blurred), "noise": scorer.score(noise)}
    assert scores["real"] < scores["blurred"] < scores["noise"], scores
    assert scores["noise"] > 20 * scores["real"]
    assert abs(scorer.score(test.images[:2000])) < 1e-6  # the reference itself
    assert seconds < 30  # ~1 s on an idle 2-core CPU once the reference is computed
    ev = scorer.evaluate(collapsed)
    assert set(ev) == {"proxy_fid", "proxy_precision", "proxy_recall", "proxy_class_tv"}
    assert ev["proxy_recall"] < 0.05 and ev["proxy_class_tv"] > 0.8  # mode collapse is visible
    ev_real = scorer.evaluate(train.images[:1000])
    assert ev_real["proxy_recall"] > 0.5 and ev_real["proxy_class_tv"] < 0.1


def test_reference_is_computed_once_and_cached_on_disk(tmp_path, monkeypatch):
    calls = []
    original = ProxyFID._reference_images

    def counting(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(ProxyFID, "_reference_images", counting)
    a = ProxyFID(reference="fashion_mnist:test", num_reference=500)
    stats = a.reference_stats
    _ = ProxyFID(reference="fashion_mnist:test", num_reference=500).reference_stats  # memory cache
    assert len(calls) == 1 and stats.n == 500 and stats.protocol == a.protocol
    assert a._cache_file().is_file()
    monkeypatch.setattr(proxymod, "_REF_CACHE", {})
    b = ProxyFID(reference="fashion_mnist:test", num_reference=500)
    np.testing.assert_array_equal(b.reference_stats.mu, stats.mu)  # from disk
    assert len(calls) == 1
    # a file written under another protocol (e.g. other classifier weights) is recomputed, not trusted
    bad = FeatureStats.load(a._cache_file())
    bad.protocol = "proxy-fmnist-classifier-000000000000/penultimate-128"
    bad.save(a._cache_file())
    monkeypatch.setattr(proxymod, "_REF_CACHE", {})
    _ = ProxyFID(reference="fashion_mnist:test", num_reference=500).reference_stats
    assert len(calls) == 2


def test_weights_resolution_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="do not exist"):
        find_proxy_weights(tmp_path / "none.safetensors")
    with pytest.raises(ValueError, match="accepted"):
        _ = ProxyFID(reference="cifar10:test").reference_stats
    monkeypatch.delenv(proxymod.ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(proxymod, "REPO_WEIGHTS", tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="train_proxy_classifier.py"):
        find_proxy_weights()
