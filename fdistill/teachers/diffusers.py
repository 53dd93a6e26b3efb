"""Diffusers UNet teachers seen as one EDM denoiser ``D(x_t, sigma, cond) -> x0_hat`` (k-diffusion ``external.py``).

Two kinds of network are accepted:

(a) :class:`fdistill.nets.unet.EDMUNet`: already an EDM denoiser (Karras et al. 2022, Table 1), used as is.
(b) any diffusers ``UNet2DModel`` trained on a DDPM/VP schedule (Ho et al. 2020) with ``prediction_type``
    ``epsilon``, ``v_prediction`` (Salimans & Ho 2022) or ``sample``, wrapped by :class:`VPUNetDenoiser`, which
    converts exactly as docs/math.md §1.2: for a VE ``sigma``,

        alpha = 1 / sqrt(1 + sigma^2),   s = sigma * alpha,   x_vp = alpha * x_t,
        t = the (fractional) timestep with sqrt((1 - abar_t) / abar_t) = sigma
            (linear interpolation of log-sigma over the scheduler's ``alphas_cumprod`` table),
        eps: x0 = (x_vp - s eps_hat) / alpha      v: x0 = alpha x_vp - s v_hat      sample: x0 = out.

The teacher is frozen (``requires_grad=False``, always in eval mode) but differentiable with respect to its
input, since SiD / SIM / Uni-Instruct back-propagate through it. Classifier-free guidance
``D_u + w (D_c - D_u)`` (``w = 1`` off, :mod:`fdistill.core.guidance`) is inherited from :meth:`Teacher.denoise`;
the sigma <-> timestep map is :mod:`fdistill.core.schedules`.
:meth:`UNetTeacher.make_network` returns a trainable copy of the network: the one-step generator and the fake
score are initialised from it (docs/math.md §5.1); with ``gradient_checkpointing`` (``teacher.gradient_checkpointing``)
the copies, never the frozen teacher, recompute their UNet blocks' activations in backward.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from fdistill.core.noise import append_dims
from fdistill.core.schedules import ddpm_sigmas, sigma_to_timestep, timestep_to_sigma
from fdistill.nets.unet import EDMUNet, unet2d_encoder_features
from fdistill.teachers.base import Teacher

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def alphas_cumprod_from_scheduler_config(config: dict) -> Tensor:
    """``alphas_cumprod`` of a diffusers DDPM-family scheduler config (any ``beta_schedule`` it supports)."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    kwargs = {k: config[k] for k in keys if config.get(k) is not None}
    return DDPMScheduler(**kwargs).alphas_cumprod.to(torch.float64)


class VPUNetDenoiser(nn.Module):
    """A diffusers ``UNet2DModel`` on a VP schedule presented as an EDM denoiser ``(x_t, sigma, cond) -> x0``.

    Args:
        unet: the network; class-conditional through ``class_labels`` when it has a class embedding.
        alphas_cumprod: the scheduler's ``abar_t`` table, shape (T,).
        prediction_type: ``epsilon`` | ``v_prediction`` | ``sample``.
        timestep_mode: ``interp`` (fractional timestep, exact sigma) or ``nearest`` (integer timestep).
        null_label: label used for ``cond=None`` (the unconditional branch of CFG) on a class-conditional
            network; ``None`` means the network has no unconditional branch.
        num_classes: conditional labels (default: the class table size, minus the null row if it is the last).
    """

    def __init__(
        self,
        unet: nn.Module,
        alphas_cumprod: Tensor,
        prediction_type: str = "epsilon",
        timestep_mode: str = "interp",
        null_label: int | None = None,
        num_classes: int | None = None,
        sigma_data: float = 0.5,
    ) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={prediction_type!r}; accepted: {', '.join(PREDICTION_TYPES)}")
        if timestep_mode not in ("interp", "nearest"):
            raise ValueError(f"timestep_mode={timestep_mode!r}; accepted: interp, nearest")
        self.unet = unet
        self.prediction_type, self.timestep_mode, self.null_label = prediction_type, timestep_mode, null_label
        # log sigma_t, increasing in t for every DDPM schedule. A plain float32 attribute, not a buffer, so that
        # casting a bf16/fp16 teacher leaves the timestep table exact.
        self.log_sigmas = ddpm_sigmas(torch.as_tensor(alphas_cumprod)).log().float()
        n_embeds = getattr(unet.config, "num_class_embeds", None) if hasattr(unet, "config") else None
        if num_classes is None:
            num_classes = int(n_embeds or 0)
            if num_classes and null_label is not None and null_label == num_classes - 1:
                num_classes -= 1
        self.num_classes = num_classes
        self.sigma_data = sigma_data
        cfg = getattr(unet, "config", None)
        if cfg is not None and getattr(cfg, "sample_size", None) is not None:
            size = cfg.sample_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            self.sample_shape = (cfg.in_channels, *size)

    def enable_gradient_checkpointing(self) -> None:
        """diffusers' gradient checkpointing in the wrapped ``UNet2DModel``."""
        self.unet.enable_gradient_checkpointing()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.unet, "is_gradient_checkpointing", False))

    @property
    def num_train_timesteps(self) -> int:
        return self.log_sigmas.shape[0]

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """The (fractional) timestep whose ``sqrt((1 - abar_t) / abar_t)`` equals ``sigma`` (clamped to [0, T-1])."""
        t = sigma_to_timestep(sigma, self.log_sigmas).float()
        return t.round() if self.timestep_mode == "nearest" else t

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Inverse of :meth:`sigma_to_t` (log-linear between table entries)."""
        return timestep_to_sigma(t, self.log_sigmas.to(t.device)).float()

    def _labels(self, cond: Tensor | None, n: int, device: torch.device) -> Tensor | None:
        if getattr(self.unet, "class_embedding", None) is None:
            return None
        if cond is None:
            if self.null_label is None:
                raise ValueError("this class-conditional UNet2DModel has no null label: set null_label for CFG")
            return torch.full((n,), self.null_label, device=device, dtype=torch.long)
        return cond.to(device=device, dtype=torch.long)

    def _vp_inputs(self, x: Tensor, sigma: Tensor | float):
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        alpha = 1 / (1 + sigma**2).sqrt()
        return sigma, alpha, sigma * alpha, self.sigma_to_t(sigma)

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> Tensor:
        sigma, alpha, s, t = self._vp_inputs(x, sigma)
        a, sd = append_dims(alpha, x.ndim), append_dims(s, x.ndim)
        x_vp = a * x.float()
        dtype = next(self.unet.parameters()).dtype
        out = self.unet(x_vp.to(dtype), t, class_labels=self._labels(cond, x.shape[0], x.device)).sample.float()
        if self.prediction_type == "epsilon":
            x0 = (x_vp - sd * out) / a
        elif self.prediction_type == "v_prediction":
            x0 = a * x_vp - sd * out
        else:
            x0 = out
        return x0.to(x.dtype)

    def features(self, x: Tensor, sigma: Tensor | float, cond: Tensor | None = None) -> list[Tensor]:
        """Encoder features of the wrapped UNet at the inputs it sees in :meth:`forward`."""
        _, alpha, _, t = self._vp_inputs(x, sigma)
        dtype = next(self.unet.parameters()).dtype
        x_vp = (append_dims(alpha, x.ndim) * x.float()).to(dtype)
        return unet2d_encoder_features(self.unet, x_vp, t, self._labels(cond, x.shape[0], x.device))


class UNetTeacher(Teacher):
    """A frozen denoiser network (EDMUNet or :class:`VPUNetDenoiser`) as a :class:`Teacher`.

    ``denoise_cond(x_t, sigma, cond)`` returns ``x0_hat`` in ``x_t``'s dtype; the network itself may run in
    ``dtype`` (bf16/fp16 teachers). ``sample(...)`` uses the EDM Heun sampler with ``sample_nfe`` by default.
    ``gradient_checkpointing`` enables it in the trainable copies of :meth:`make_network` (not in ``net``).
    """

    def __init__(
        self,
        net: nn.Module,
        dtype: torch.dtype | str = torch.float32,
        sample_nfe: int = 18,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(net, (EDMUNet, VPUNetDenoiser)):
            raise TypeError(f"UNetTeacher wraps an EDMUNet or a VPUNetDenoiser, got {type(net).__name__}")
        dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        if any(p.dtype != dtype for p in net.parameters()):
            nn.Module.to(net, dtype=dtype)  # plain cast (diffusers' ModelMixin.to warns about fp32-pinned modules)
        self.net = net.eval().requires_grad_(False)
        self.sample_shape = tuple(net.sample_shape)
        self.num_classes = int(net.num_classes)
        self.sigma_data = float(net.sigma_data)
        self.sample_nfe = int(sample_nfe)
        self.gradient_checkpointing = bool(gradient_checkpointing)

    def train(self, mode: bool = True) -> UNetTeacher:
        """The teacher always stays in eval mode (no dropout), even inside a module put in train mode."""
        return super().train(False)

    def denoise_cond(self, x_t: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        return self.net(x_t, sigma, cond).to(x_t.dtype)

    @property
    def timestep_sigmas(self) -> Tensor | None:
        return self.net.log_sigmas.double().exp() if isinstance(self.net, VPUNetDenoiser) else None

    def features(self, x_t: Tensor, sigma: Tensor, cond: Tensor | None = None) -> list[Tensor]:
        """Encoder feature maps (one per down block, then the mid block) in ``x_t``'s dtype."""
        return [f.to(x_t.dtype) for f in self.net.features(x_t, sigma, cond)]

    def make_network(self) -> nn.Module:
        """A trainable float32 deep copy of the teacher's network (train mode, ``requires_grad=True``): the
        one-step generator and the fake score start from it. A bf16/fp16 teacher hands over its rounded weights;
        load the teacher in float32 when the students should start from the exact ones. With
        ``gradient_checkpointing`` the copy recomputes its UNet blocks' activations in backward (same gradients,
        less activation memory); the frozen teacher never does."""
        net = copy.deepcopy(self.net).float().train().requires_grad_(True)
        if self.gradient_checkpointing:
            net.enable_gradient_checkpointing()
        return net

    @torch.no_grad()
    def sample(self, n, cond=None, nfe=None, guidance=1.0, generator=None, device="cpu") -> Tensor:  # noqa: D102
        return super().sample(n, cond, self.sample_nfe if nfe is None else nfe, guidance, generator, device)

    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        subfolder: str | None = None,
        dtype: torch.dtype | str = torch.float32,
        sample_nfe: int = 18,
        prediction_type: str | None = None,
        null_label: int | None = None,
        timestep_mode: str = "interp",
        gradient_checkpointing: bool = False,
        **kwargs,
    ) -> UNetTeacher:
        """Load from a local folder or a hub id (``path``, ``subfolder`` as in diffusers).

        The class is read from ``config.json``'s ``_class_name``: ``EDMUNet`` is used directly; a ``UNet2DModel``
        is wrapped with the scheduler config found next to it (``scheduler/scheduler_config.json`` of the
        pipeline, or ``scheduler_config.json`` in the model folder), whose ``prediction_type`` is used unless
        given. ``kwargs`` go to ``from_pretrained`` (e.g. ``local_files_only=True``, ``revision``).
        """
        from diffusers import UNet2DModel

        path = str(path)
        if subfolder is None and Path(path, "model_index.json").is_file():
            subfolder = "unet"
        config = EDMUNet.load_config(path, subfolder=subfolder, **kwargs)
        name = config.get("_class_name", "EDMUNet")
        if name == "EDMUNet":
            net: nn.Module = EDMUNet.from_pretrained(path, subfolder=subfolder, **kwargs)
        elif name == "UNet2DModel":
            unet = UNet2DModel.from_pretrained(path, subfolder=subfolder, **kwargs)
            sched = _load_scheduler_config(path, subfolder, **kwargs)
            ptype = prediction_type or sched.get("prediction_type", "epsilon")
            net = VPUNetDenoiser(unet, alphas_cumprod_from_scheduler_config(sched), ptype, timestep_mode, null_label)
        else:
            raise ValueError(f"{path}: model class {name!r} is not supported here; accepted: EDMUNet, UNet2DModel")
        return cls(net, dtype=dtype, sample_nfe=sample_nfe, gradient_checkpointing=gradient_checkpointing)


def _load_scheduler_config(path: str, subfolder: str | None, **kwargs) -> dict:
    """The scheduler config beside a UNet: local ``<root>/scheduler/`` or ``<model>/scheduler_config.json``, or
    the hub's ``scheduler`` subfolder; defaults to the DDPM linear schedule when none is found."""
    base = Path(path)
    local = [base / "scheduler" / "scheduler_config.json", base / (subfolder or "") / "scheduler_config.json"]
    for cand in local:
        if cand.is_file():
            return json.loads(cand.read_text())
    if not base.exists():
        from diffusers import DDPMScheduler

        try:
            return dict(DDPMScheduler.load_config(path, subfolder="scheduler", **kwargs))
        except Exception:  # noqa: BLE001 - fall back to the DDPM default below
            pass
    return {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}


def load_teacher(t) -> UNetTeacher:
    """Build from ``TeacherConfig`` (``teacher.kind=unet``, ``teacher.path``, ``teacher.subfolder``,
    ``teacher.dtype``, ``teacher.sample_nfe``, ``teacher.gradient_checkpointing``); a missing path raises one clear
    line."""
    hint = (
        "use teacher.path=checkpoints/fmnist_teacher (the shipped teacher) or train one with "
        "`fdistill train-teacher configs/fmnist_teacher.yaml`"
    )
    if not t.path:
        raise FileNotFoundError(f"teacher.kind=unet needs teacher.path (a diffusers folder or hub id); {hint}")
    path = Path(t.path).expanduser()
    # "org/name" is a hub id unless "org" is a local folder (then the user meant a local path)
    parts = Path(t.path).parts
    looks_local = path.is_absolute() or t.path.startswith((".", "~")) or len(parts) != 2 or Path(parts[0]).is_dir()
    if not path.exists() and looks_local:
        raise FileNotFoundError(f"teacher.path={t.path!r} does not exist; {hint}")
    dtype = getattr(t, "dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"teacher.dtype={dtype!r}; accepted: {', '.join(DTYPES)}")
    target = str(path) if path.exists() else t.path
    try:
        return UNetTeacher.from_pretrained(
            target,
            subfolder=t.subfolder or None,
            dtype=dtype,
            sample_nfe=getattr(t, "sample_nfe", 18),
            gradient_checkpointing=getattr(t, "gradient_checkpointing", False),
        )
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"teacher.path={t.path!r} could not be loaded ({first}); {hint}") from None


__all__ = ["UNetTeacher", "VPUNetDenoiser", "alphas_cumprod_from_scheduler_config", "load_teacher"]
