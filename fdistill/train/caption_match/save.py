"""Writing a caption-match folder that :meth:`fdistill.rewards.PreferenceReward.from_pretrained` loads.

``config.json`` + ``model.safetensors`` (vision tower, projections, logit scale; the frozen text tower only with
``save_text_tower``, else ``fdistill_text_tower.json`` names it with a fingerprint), the tokenizer,
``preprocessor_config.json`` (mean = std = 0.5), ``training_info.json`` with the metrics measured through the reward
path on the written folder, and the ``README.md`` card. The folder is replaced atomically (temp dir, then rename).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from fdistill.rewards import MINILM_PACKAGE_NAME, TEXT_TOWER_FILE, text_tower_fingerprint
from fdistill.train.caption_match.card import card
from fdistill.train.caption_match.evaluate import degrade, evaluate_reward_folder
from fdistill.train.caption_match.model import MEAN, STD
from fdistill.train.checkpoint import publish_dir

__all__ = ["save_folder"]


def _preprocessor_config(image_size: int) -> dict:
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(MEAN),
        "image_std": list(STD),
        "do_convert_rgb": True,
    }


def _write_model(tmp: Path, model, tokenizer, text_model: str, save_text_tower: bool) -> int:
    """The weights (without the frozen text tower unless ``save_text_tower``), tokenizer and preprocessor config;
    returns the number of saved parameters."""
    model.eval()
    state = model.state_dict()
    if not save_text_tower:
        state = {k: v for k, v in state.items() if not k.startswith("text_model.")}
    saved_params = sum(v.numel() for v in state.values())  # before save_pretrained, which may consume ``state``
    model.save_pretrained(tmp, state_dict=state)
    if not save_text_tower:
        marker = {
            "text_model": text_model,
            "sha256": text_tower_fingerprint(model.text_model),
            "about": "the frozen text tower is not in model.safetensors; fdistill.rewards.load_text_tower "
            f"loads it from text_model ({MINILM_PACKAGE_NAME!r} = the installed package, else a folder or hub id)",
        }
        (tmp / TEXT_TOWER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    tokenizer.save_pretrained(tmp)
    image_size = model.config.vision_config.image_size
    (tmp / "preprocessor_config.json").write_text(json.dumps(_preprocessor_config(image_size), indent=2) + "\n")
    return saved_params


def save_folder(
    out_dir: Path,
    model,
    tokenizer,
    info: dict,
    images: Tensor,
    captions: Sequence[str],
    held: Tensor,
    expected_text: Tensor,
    save_text_tower: bool,
    validation_run: str | Path | None,
    t_start: float,
) -> Path:
    """Write the trained ``model`` to ``out_dir`` with ``info`` (``training_info.json``, completed here with the
    saved parameter count, the reward-path ``metrics``, the total ``seconds`` since ``t_start`` and the quoted
    ``validation_run``) and its card; returns ``out_dir``."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        info = dict(info)
        info["saved_params"] = _write_model(tmp, model, tokenizer, info["recipe"]["text_model"], save_text_tower)
        image_sets = {"": images, "_degraded": degrade(images)}
        info["metrics"] = evaluate_reward_folder(
            tmp, captions, image_sets, {"train": ~held, "heldout": held}, expected_text
        )
        info["seconds"] = round(time.time() - t_start, 1)
        if validation_run is not None:
            vinfo = json.loads((Path(validation_run) / "training_info.json").read_text())
            if vinfo["recipe"]["fit_on"] != "train":
                raise ValueError(f"validation_run={validation_run}: not a fit_on='train' run")
            keep = ("command", "steps", "train_seconds", "metrics")
            info["validation_run"] = {k: vinfo[k] for k in keep}
        (tmp / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
        (tmp / "README.md").write_text(card(info))
        publish_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
