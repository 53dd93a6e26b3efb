"""Resumable checkpoints of the plain-PyTorch trainers (VAE, caption-match), in the layout of the accelerate ones.

A checkpoint is ``RUN/checkpoints/step_XXXXXXXX/state.pt``: the trained tensors, the optimizer, the states of the
``torch.Generator`` s the loop draws from (in the order it draws), the loop's own counters and logs, and the recipe
it was made with; every value is a tensor or a plain value, so it loads under ``torch.load(weights_only=True)``.
It gets a ``manifest.json`` (:func:`fdistill.train.checkpoint.write_manifest`) and is renamed into place when
complete, so ``--resume latest`` (:func:`fdistill.train.checkpoint.resolve_resume`: the newest checkpoint that
verifies) never sees a half-written one and a damaged ``--resume PATH`` is a one-line :class:`CheckpointError`.
Restoring every generator state, weight and counter makes the resumed run replay the uninterrupted one bit for bit
(the training loops of ``docs/math.md §5`` have no other source of randomness). ``RUN`` is ``OUT.run`` next to the
output folder ``OUT`` (:func:`run_dir_for`); it is removed once ``OUT`` holds the finished model (:func:`finish`).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fdistill.train.checkpoint import CheckpointError, list_checkpoints, publish_dir, resolve_resume, write_manifest

__all__ = ["KEEP", "STATE_FILE", "finish", "pack", "run_dir_for", "save", "start", "unpack"]

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
KEEP = 2  # checkpoints kept: the newest, and one to fall back to if it is damaged


def run_dir_for(out_dir: str | Path) -> Path:
    """Where a run writing the folder ``out_dir`` keeps its checkpoints: ``OUT.run`` (``OUT.run/checkpoints``)."""
    out = Path(out_dir)
    return out.parent / f"{out.name}.run"


def pack(tensors: Mapping[str, Tensor], optimizer: torch.optim.Optimizer, generators: Sequence[torch.Generator],
         loop: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The state to :func:`save`: the named trained ``tensors``, the optimizer, the generators and ``loop`` (the
    loop's counters, logs and data order: tensors and plain values only)."""
    return {
        "tensors": {k: v.detach().clone() for k, v in tensors.items()},
        "optimizer": optimizer.state_dict(),
        "generators": [g.get_state() for g in generators],
        "loop": loop,
    }


def unpack(state: dict[str, Any], tensors: Mapping[str, Tensor], optimizer: torch.optim.Optimizer,
           generators: Sequence[torch.Generator]) -> dict[str, Any]:  # fmt: skip
    """Copy a :func:`pack` ed state into ``tensors`` (in place), ``optimizer`` and ``generators``; returns ``loop``.
    A checkpoint of other shapes is a :class:`CheckpointError` naming the first tensor that differs."""
    saved = state["tensors"]
    if saved.keys() != tensors.keys():
        diff = sorted(saved.keys() ^ tensors.keys())
        raise CheckpointError(f"the checkpoint's tensors do not fit this model ({diff[0]!r} is only in one of them)")
    if len(state["generators"]) != len(generators):
        raise CheckpointError(f"the checkpoint has {len(state['generators'])} generator states, not {len(generators)}")
    with torch.no_grad():
        for name, t in tensors.items():
            if saved[name].shape != t.shape:
                raise CheckpointError(f"{name} is {tuple(saved[name].shape)} in the checkpoint, {tuple(t.shape)} here")
            t.copy_(saved[name])
    optimizer.load_state_dict(state["optimizer"])
    for g, s in zip(generators, state["generators"], strict=True):
        g.set_state(s)
    return state["loop"]


def start(run_dir: Path, resume: str | None, recipe: dict[str, Any]) -> dict[str, Any] | None:
    """The state to resume from (``None``: start fresh). ``resume``: ``None`` (an earlier run's checkpoints in
    ``run_dir`` are an error, so they are not overwritten by mistake), ``"latest"`` (the newest complete
    checkpoint; none yet: start fresh with a warning) or a checkpoint folder. A damaged checkpoint, or one made with
    another ``recipe`` (the settings that change the trajectory), is a one-line :class:`CheckpointError`."""
    ckpt = resolve_resume(run_dir, resume)
    if ckpt is None:
        if resume == "latest":
            log.warning("--resume latest: no checkpoint in %s yet, starting from step 0", run_dir / "checkpoints")
        elif list_checkpoints(run_dir):
            raise CheckpointError(f"{run_dir / 'checkpoints'} holds checkpoints of an earlier run: pass --resume "
                                  "latest to continue it, or remove that folder")  # fmt: skip
        return None
    try:
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
        saved_recipe, step = dict(state["recipe"]), int(state["step"])
    except Exception as e:  # verified by resolve_resume, so only a file changed since or another trainer's folder
        raise CheckpointError(f"--resume {ckpt}: unreadable {STATE_FILE} ({type(e).__name__}: {e})") from None
    for key, value in recipe.items():
        if saved_recipe.get(key) != value:
            raise CheckpointError(f"--resume {ckpt}: made with {key}={saved_recipe.get(key)!r}, this run has "
                                  f"{key}={value!r}; resume with the same settings")  # fmt: skip
    log.info("resuming from %s at step %d", ckpt, step)
    return state


def save(run_dir: Path, step: int, state: dict[str, Any], recipe: dict[str, Any], keep: int = KEEP) -> Path:
    """Write ``state`` (from :func:`pack`) with ``step`` and ``recipe`` as ``run_dir/checkpoints/step_XXXXXXXX``
    (manifest last, then renamed into place); keeps the newest ``keep`` checkpoints."""
    root = run_dir / "checkpoints"
    final, tmp = root / f"step_{step:08d}", root / f".tmp_step_{step:08d}"
    for stale in root.glob(".tmp_step_*"):  # left by a killed save
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        torch.save({**state, "step": step, "recipe": recipe}, tmp / STATE_FILE)
        write_manifest(tmp)
        publish_dir(tmp, final, world_readable=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def finish(run_dir: Path) -> None:
    """Remove the checkpoints of a run whose model is saved (nothing is left to resume), and ``run_dir`` if empty."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()
