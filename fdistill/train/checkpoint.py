"""Checkpoints that resume **everything** (EDM2's checkpoint object, on accelerate), verified before loading.

``accelerator.save_state`` stores every prepared model and optimizer, the RNG states and every object
registered with ``register_for_checkpointing`` (EMA, method state such as f-distill's ratio means,
the step counter). Each checkpoint is written to a temporary folder, gets a ``manifest.json`` (every file's
name, size and sha256) written last, and is renamed when complete, so a run killed while saving never leaves a
half-written "latest".

A checkpoint is *complete* when its manifest verifies and every pickle in it (optimizer, RNG and custom states,
which accelerate unpickles) loads under ``torch.load(weights_only=True)``: a crafted pickle is refused before
``load_state`` sees it. ``resolve_resume(run_dir, "latest")`` takes the newest complete one and logs one line
naming any newer one it skipped; a damaged ``--resume PATH`` raises :class:`CheckpointError`. A checkpoint from
before manifests (no ``manifest.json``) counts as complete when its safetensors headers and pickles load; as a
PATH it is loaded with a warning. A full disk while saving raises :class:`DiskFullError` after removing the
partial folder (earlier checkpoints are untouched).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors.torch import save_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from fdistill.config import ConfigError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d{8})$")
MANIFEST = "manifest.json"
_DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of a sharded state (FSDP SHARDED_STATE_DICT)
# files accelerate's load_state torch.load()s (optimizer/scheduler .bin, random_states/custom_checkpoint .pkl,
# scaler.pt): each must pass the weights_only unpickler before load_state runs
PICKLE_SUFFIXES = (".pkl", ".bin", ".pt", ".pth")
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_LOW_FREE_BYTES = 64 << 20  # torch.save on a full disk fails with an errno-less RuntimeError: judge by free space


class CheckpointError(ConfigError):
    """A checkpoint that is damaged, incomplete or unsafe to load; the message is one line naming the file."""


class DiskFullError(OSError):
    """A checkpoint could not be written because the disk is full (one-line message; ``errno`` is ENOSPC)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC


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


class DistillState(TrainState):
    """:class:`TrainState` plus the length of ``metrics.jsonl`` when the checkpoint was written: a resumed run drops
    the rows logged after it (:func:`fdistill.train.metrics_log.truncate_metrics`); -1 in older checkpoints."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics_bytes = -1

    def state_dict(self) -> dict[str, int]:
        return {**super().state_dict(), "metrics_bytes": self.metrics_bytes}

    def load_state_dict(self, state: dict[str, int]) -> None:
        super().load_state_dict(state)
        self.metrics_bytes = int(state.get("metrics_bytes", -1))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Every ``checkpoints/step_XXXXXXXX`` folder, oldest first (complete or not: see :func:`check_checkpoint`)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _NAME.match(p.name) and p.is_dir()), key=lambda p: p.name)


# ---- manifest and verification -------------------------------------------------------------------------------


def _files(folder: Path) -> list[Path]:
    """Regular files under ``folder`` except the manifest and dotfiles (temporary or editor files); the ``.metadata``
    of a sharded FSDP state (a ``torch.distributed.checkpoint`` folder) is listed."""
    rel = (p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    return sorted(p for p in rel if p.as_posix() != MANIFEST and not _hidden(p))


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") and part != _DCP_METADATA for part in rel.parts)


def _sha256(path: Path, fsync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()


def write_manifest(folder: str | Path) -> Path:
    """Write ``folder/manifest.json`` (name, size, sha256 of every file; files fsynced first), atomically."""
    folder = Path(folder)
    entries = [{"name": p.as_posix(), "size": (folder / p).stat().st_size, "sha256": _sha256(folder / p, True)}
               for p in _files(folder)]  # fmt: skip
    tmp = folder / f".{MANIFEST}.tmp"
    with open(tmp, "w") as f:
        json.dump({"format": 1, "files": entries}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(folder / MANIFEST)
    return folder / MANIFEST


def _manifest_problem(folder: Path) -> str | None:
    try:
        entries = json.loads((folder / MANIFEST).read_text())["files"]
        listed = {str(e["name"]): (int(e["size"]), str(e["sha256"])) for e in entries}
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__})"
    for name, (size, digest) in listed.items():
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return f"{MANIFEST} names a file outside the checkpoint ({name!r})"
        if not path.is_file():
            return f"{name} is missing ({MANIFEST} lists it)"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size} bytes, {MANIFEST} says {size}"
        if _sha256(path) != digest:
            return f"{name} does not match its sha256 in {MANIFEST} (modified or corrupted)"
    extra = [p.as_posix() for p in _files(folder) if p.as_posix() not in listed]
    if extra:
        return f"{extra[0]} is not listed in {MANIFEST} (added after the checkpoint was written)"
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _load_problem(folder: Path, structure: bool) -> str | None:
    """Every pickle must load with ``weights_only=True``; with ``structure`` every safetensors header too."""
    from accelerate.utils import load as accelerate_load  # weights_only=True plus accelerate's numpy allowlist

    for rel in _files(folder):
        path = folder / rel
        if path.suffix in PICKLE_SUFFIXES:
            try:
                accelerate_load(path, map_location="cpu")
            except pickle.UnpicklingError as e:
                return (f"{rel.as_posix()} holds objects other than tensors and plain values, refused unpickling "
                        f"(it could run code; {_first_line(e)})")  # fmt: skip
            except Exception as e:  # a truncated zip, a garbled stream, ...
                return f"{rel.as_posix()} is unreadable ({_first_line(e)})"
        elif structure and path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(path), "pt"):
                    pass
            except Exception as e:
                return f"{rel.as_posix()} is unreadable ({_first_line(e)})"
    return None


def check_checkpoint(folder: str | Path) -> str | None:
    """``None`` when ``folder`` is complete and safe to load, otherwise why not (one line naming the file).

    With a manifest: every listed file has its size and sha256, nothing is missing or added, and every pickle
    passes the ``weights_only`` unpickler. Without one (written before manifests): the pickles and safetensors
    headers load."""
    folder = Path(folder)
    has_manifest = (folder / MANIFEST).is_file()
    if has_manifest and (problem := _manifest_problem(folder)):
        return problem
    if not has_manifest and not any((folder / p).suffix == ".safetensors" for p in _files(folder)):
        return f"no {MANIFEST} and no model weights (not a checkpoint)"
    return _load_problem(folder, structure=not has_manifest)


def _is_main_process() -> bool:
    from accelerate.state import PartialState

    return PartialState().is_main_process if PartialState._shared_state else True  # never initializes it


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """``None`` -> no resume; ``latest`` -> newest complete checkpoint (None if there is none yet; newer damaged
    ones are skipped with one log line; :class:`CheckpointError` if all are damaged); otherwise a checkpoint path
    that must exist and verify (:class:`CheckpointError` naming the bad file)."""
    if resume is None:
        return None
    if resume == "latest":
        found, skipped = list_checkpoints(run_dir), []
        for ckpt in reversed(found):
            problem = check_checkpoint(ckpt)
            if problem is None:
                if skipped and _is_main_process():
                    log.warning("--resume latest: %s; resuming from %s", "; ".join(skipped), ckpt)
                return ckpt
            skipped.append(f"skipping {ckpt}: {problem}")
        if skipped:
            raise CheckpointError(f"--resume latest: no complete checkpoint in {Path(run_dir) / 'checkpoints'} "
                                  f"({'; '.join(skipped)})")  # fmt: skip
        return None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume {resume!r}: no such checkpoint folder (use 'latest' or a step_XXXXXXXX dir)")
    problem = check_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"--resume {resume}: damaged or unsafe checkpoint: {problem}; "
                              "resume from another one (e.g. --resume latest)")  # fmt: skip
    if not (path / MANIFEST).is_file() and _is_main_process():
        log.warning("--resume %s: no %s (written before checkpoint manifests), its files cannot be verified; "
                    "loading it", resume, MANIFEST)  # fmt: skip
    return path


@contextlib.contextmanager
def _weights_only_custom_state() -> Iterator[None]:
    """accelerate loads registered objects with ``weights_only=False``: load them with ``weights_only=True``."""
    import accelerate.accelerator as acc_module
    from accelerate.utils import load as accelerate_load

    def load_custom_state(obj, path: str, index: int = 0) -> None:
        obj.load_state_dict(accelerate_load(f"{path}/custom_checkpoint_{index}.pkl", map_location="cpu"))

    original = acc_module.load_custom_state
    acc_module.load_custom_state = load_custom_state
    try:
        yield
    finally:
        acc_module.load_custom_state = original


def load_checkpoint(accelerator: Accelerator, ckpt: str | Path) -> None:
    """``accelerator.load_state(ckpt)`` with every pickle, registered objects included, unpickled by
    ``weights_only=True`` (closes the window between :func:`resolve_resume`'s check and the load). A checkpoint
    written under FSDP loads into a run without FSDP too (:func:`unsharded_view`)."""
    ckpt = Path(ckpt)
    with _weights_only_custom_state(), contextlib.ExitStack() as stack:
        if accelerator.distributed_type != DistributedType.FSDP and _is_fsdp_checkpoint(ckpt):
            ckpt = unsharded_view(ckpt, Path(stack.enter_context(tempfile.TemporaryDirectory())))
        accelerator.load_state(str(ckpt))


# ---- FSDP checkpoints without FSDP -----------------------------------------------------------------------------

_FSDP_MODEL = "pytorch_model_fsdp"


def _is_fsdp_checkpoint(ckpt: Path) -> bool:
    return any(ckpt.glob(f"{_FSDP_MODEL}*"))


def _fsdp_file(ckpt: Path, stem: str, i: int, key: str) -> dict | None:
    """The ``i``-th full state dict named ``stem`` (``pytorch_model_fsdp`` or ``optimizer``) of an FSDP checkpoint:
    a FULL_STATE_DICT file, or a SHARDED_STATE_DICT (``torch.distributed.checkpoint``) folder read in one
    process; ``None`` when there is none."""
    from accelerate.utils import load as accelerate_load

    full = ckpt / (f"{stem}.bin" if i == 0 else f"{stem}_{i}.bin")
    if full.is_file():
        return accelerate_load(full, map_location="cpu")
    sharded = ckpt / f"{stem}_{i}"
    if not sharded.is_dir():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(sharded, Path(tmp) / "full.pt")
        return accelerate_load(Path(tmp) / "full.pt", map_location="cpu")[key]


def _indexed_optimizer_state(state: dict) -> dict:
    """An optimizer state dict keyed by parameter name (FSDP's) keyed by position instead (``torch.optim``'s)."""
    names = [n for group in state["param_groups"] for n in group["params"]]
    index = {n: k for k, n in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def unsharded_view(ckpt: Path, out: Path) -> Path:
    """``out`` filled with ``ckpt`` (written under FSDP, FULL or SHARDED state dicts) in the layout a run without FSDP
    loads: ``model[_i].safetensors`` and position-keyed ``optimizer[_i].bin``; RNG and registered states linked."""
    i = 0
    while (model := _fsdp_file(ckpt, _FSDP_MODEL, i, "model")) is not None:
        save_file(
            {k: v.contiguous() for k, v in model.items()},
            out / ("model.safetensors" if i == 0 else f"model_{i}.safetensors"),
        )
        optim = _fsdp_file(ckpt, "optimizer", i, "optimizer")
        torch.save(_indexed_optimizer_state(optim), out / ("optimizer.bin" if i == 0 else f"optimizer_{i}.bin"))
        i += 1
    for f in ckpt.glob("*.pkl"):
        (out / f.name).symlink_to(f.resolve())
    return out


# ---- writing ---------------------------------------------------------------------------------------------------


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


def any_process(accelerator: Accelerator, *flags: bool) -> list[bool]:
    """Whether each flag is set on any process (one collective for all of them, so also a barrier; none on one
    process)."""
    if accelerator.num_processes == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=accelerator.device)
    return [bool(v > 0) for v in accelerator.reduce(t, reduction="sum").tolist()]


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _is_disk_full(e: BaseException, free: int | None) -> bool:
    if getattr(e, "errno", None) in _DISK_FULL_ERRNOS or "No space left on device" in str(e):
        return True
    return isinstance(e, RuntimeError | OSError) and free is not None and free < _LOW_FREE_BYTES


def _mib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**20:.1f} MiB"


def save_checkpoint(accelerator: Accelerator, run_dir: str | Path, step: int, keep: int) -> Path:
    """Save the full training state as ``run_dir/checkpoints/step_XXXXXXXX`` (manifest last, then renamed) and
    keep the newest ``keep``; a full disk raises :class:`DiskFullError` with the partial folder removed."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    main = accelerator.is_main_process
    if main and root.is_dir():
        for stale in root.glob(".tmp_step_*"):  # left by a killed or failed save
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    error: BaseException | None = None
    try:
        accelerator.save_state(str(tmp))
    except Exception as e:  # every process must reach the collectives below, whatever failed
        error = e
    (failed,) = any_process(accelerator, error is not None)
    if main and not failed:
        try:
            write_manifest(tmp)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except OSError as e:
            error = e
    free = _free_bytes(root) if error is not None else None  # before the cleanup frees space
    failed, disk_full = any_process(accelerator, error is not None, error is not None and _is_disk_full(error, free))
    if failed:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = [p for p in list_checkpoints(run_dir) if p != final]
        intact = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        cause = _first_line(error) if error is not None else "on another process"
        if disk_full:
            free = free if error is not None else _free_bytes(root)
            raise DiskFullError(
                f"disk full: could not write checkpoint {final} ({_mib(free)} free on {root}; {cause}); removed "
                f"the partial {tmp.name}, {intact}. Free some space, then continue with --resume latest"
            ) from error
        if error is None:
            raise RuntimeError(f"writing checkpoint {final} failed on another process; removed {tmp.name}; {intact}")
        raise error
    if main:
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
