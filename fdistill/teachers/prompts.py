"""Prompts of a text-to-image teacher: the prompt file and the cached text-encoder states per prompt id
(``StableDiffusionPipeline.encode_prompt``'s encoding; docs/math.md §1.2)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn


def read_prompts(path: str | Path) -> list[str]:
    """One prompt a line (surrounding whitespace stripped, empty lines skipped)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"teacher.prompts_file={str(path)!r} not found (a text file with one prompt a line)")
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


class PromptTable:
    """Prompt ids -> text-encoder hidden states ``(B, L, D)``, encoded like ``StableDiffusionPipeline.encode_prompt``
    and cached on first use.

    Id ``len(prompts)`` (and ``cond=None``) is the empty prompt ``""``, the unconditional branch. With ``cache``
    the embeddings live in one lazily filled ``(N + 1, L, D)`` buffer on the text encoder's device (in its dtype:
    ``N * L * D`` values, e.g. 10k SD prompts = 1.2 GB in bf16); without it every call runs the text encoder.
    The table is shared, not copied, by ``copy.deepcopy`` (the EMA of a generator shares its teacher's prompts).
    """

    def __init__(self, prompts: Sequence[str], tokenizer, text_encoder: nn.Module, cache: bool = True) -> None:
        self.prompts = list(prompts)
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.cache = cache
        self.index = {}
        for i, p in enumerate(self.prompts):
            self.index.setdefault(p, i)
        self._table: Tensor | None = None
        self._filled: Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def __deepcopy__(self, memo) -> PromptTable:
        return self

    @property
    def null_id(self) -> int:
        return len(self.prompts)

    def text(self, i: int) -> str:
        return "" if i == self.null_id else self.prompts[i]

    def ids_for(self, texts: Sequence[str]) -> Tensor:
        """Prompt ids of ``texts`` (``""`` is the null id); a text missing from the table is one clear error."""
        out = []
        for t in texts:
            if t == "":
                out.append(self.null_id)
            elif t in self.index:
                out.append(self.index[t])
            else:
                raise KeyError(f"prompt {t!r} is not in the teacher's prompt table ({len(self)} prompts)")
        return torch.tensor(out, dtype=torch.long)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> Tensor:
        """``text_encoder(tokenizer(texts, padding='max_length', truncation=True)).last_hidden_state`` — the
        stock pipeline's prompt encoding (attention mask passed to the text encoder only when its config sets
        ``use_attention_mask``, as diffusers does), so an exported student sees the same embeddings."""
        tok = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        enc = self.text_encoder
        device = next(enc.parameters()).device
        mask = tok.attention_mask.to(device) if getattr(enc.config, "use_attention_mask", False) else None
        return enc(tok.input_ids.to(device), attention_mask=mask)[0]

    def _check(self, ids: Tensor) -> None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > self.null_id):
            raise IndexError(
                f"prompt ids must lie in 0..{self.null_id} ({self.null_id} = empty prompt), got "
                f"{int(ids.min())}..{int(ids.max())}"
            )

    def embeddings(self, cond: Tensor | None, batch: int, device: torch.device | str) -> Tensor:
        """Hidden states for a batch of prompt ids (``None`` = empty prompt for all ``batch`` samples)."""
        ids = torch.full((batch,), self.null_id, dtype=torch.long) if cond is None else cond.long().reshape(-1)
        self._check(ids)
        if not self.cache:
            return self.encode([self.text(int(i)) for i in ids.tolist()]).to(device)
        # the cache is a normal tensor even when first filled under torch.inference_mode (sampling, pipelines)
        with torch.inference_mode(False), torch.no_grad():
            enc_device = next(self.text_encoder.parameters()).device
            if self._table is None:
                empty = self.encode([""]).clone()
                self._table = empty.new_zeros((self.null_id + 1, *empty.shape[1:]))
                self._filled = torch.zeros(self.null_id + 1, dtype=torch.bool, device=enc_device)
                self._table[self.null_id] = empty[0]
                self._filled[self.null_id] = True
            elif self._table.device != enc_device:
                self._table, self._filled = self._table.to(enc_device), self._filled.to(enc_device)
            ids = ids.to(enc_device).clone()
            missing = ids[~self._filled[ids]].unique()
            for chunk in missing.split(256) if missing.numel() else ():
                self._table[chunk] = self.encode([self.text(int(i)) for i in chunk.tolist()]).to(self._table.dtype)
                self._filled[chunk] = True
        return self._table[ids].to(device)
