"""Checkpoints that resume **everything** (EDM2's checkpoint object, on accelerate).

``accelerator.save_state`` stores every prepared model and optimizer, the RNG states and every object
registered with ``register_for_checkpointing`` (EMA, method state such as f-distill's ratio means,
the step counter). Each checkpoint is written to a temporary folder and renamed when complete, so a
run killed while saving never leaves a half-written "latest"; ``latest`` is the highest complete step.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

_NAME = re.compile(r"^step_(\d{8})$")


class TrainState:
    """The counters that must survive a restart (registered for checkpointing)."""

    def __init__(self) -> None:
        self.step = 0
        self.images_seen = 0
        self.nonfinite_total = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "images_seen": self.images_seen, "nonfinite_total": self.nonfinite_total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])
        self.images_seen = int(state["images_seen"])
        self.nonfinite_total = int(state.get("nonfinite_total", 0))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _NAME.match(p.name) and p.is_dir()), key=lambda p: p.name)


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """``None`` -> no resume; ``latest`` -> newest complete checkpoint (None if there is none yet);
    otherwise a checkpoint path that must exist."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {resume!r}: no such checkpoint folder (use 'latest' or a step_XXXXXXXX dir)")
    return path


def publish_dir(tmp: str | Path, final: str | Path, world_readable: bool = True) -> Path:
    """Replace folder ``final`` by the fully written folder ``tmp`` (rename, so readers never see a half-written
    one; the previous ``final`` is removed only after the swap). ``world_readable``: safetensors writes 0600 files,
    a shipped model should be 0644."""
    tmp, final = Path(tmp), Path(final)
    if world_readable:
        for f in tmp.rglob("*"):
            if f.is_file():
                f.chmod(0o644)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(accelerator: Accelerator, run_dir: str | Path, step: int, keep: int) -> Path:
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
