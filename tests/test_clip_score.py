"""CLIP score through torchmetrics with a tiny random CLIP (CLIPConfig) and an offline tokenizer; no network."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fdistill.metrics.clip_score import (  # noqa: E402
    CLIPWeightsNotFound,
    TensorFeaturesCLIP,
    as_embedding,
    clip_score,
    load_clip,
    make_clip_score,
)


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet (the first 256 characters of every CLIP vocabulary)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_clip() -> tuple[torch.nn.Module, object]:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    from fdistill.metrics.clip_score import _image_processor_cls

    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 32,
                     "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"]},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )  # fmt: skip
    model = CLIPModel(config).eval()
    image_processor = _image_processor_cls()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def clip_pair():
    return tiny_clip()


def test_wrapper_returns_tensors(clip_pair):
    model, processor = clip_pair
    wrapped = TensorFeaturesCLIP(model)
    pix = processor(images=[torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)], return_tensors="pt")
    img = wrapped.get_image_features(pix["pixel_values"])
    tok = processor(text=["a red bag"], return_tensors="pt", padding=True)
    txt = wrapped.get_text_features(tok["input_ids"], tok["attention_mask"])
    assert isinstance(img, torch.Tensor) and img.shape == (1, 8)
    assert isinstance(txt, torch.Tensor) and txt.shape == (1, 8)
    # transformers-4 style (tensor) and return_dict=False style (tuple) are handled too
    assert as_embedding(img, "image") is img
    assert as_embedding((torch.zeros(1, 3, 16), img), "image") is img


def test_clip_score_matches_manual_cosine(clip_pair):
    model, processor = clip_pair
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    captions = ["a shoe", "a bag", "a red dress", "trousers"]
    score = clip_score(images, captions, model=clip_pair)
    wrapped = TensorFeaturesCLIP(model)
    with torch.no_grad():
        img = wrapped.get_image_features(processor(images=list(images), return_tensors="pt")["pixel_values"])
        tok = processor(text=captions, return_tensors="pt", padding=True)
        txt = wrapped.get_text_features(tok["input_ids"], tok["attention_mask"])
    manual = (100 * torch.nn.functional.cosine_similarity(img, txt)).mean().clamp(min=0)  # torchmetrics clips the mean
    assert score == pytest.approx(float(manual), abs=1e-4)


def test_clip_score_from_saved_directory_and_float_images(clip_pair, tmp_path):
    model, processor = clip_pair
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    wrapped, proc = load_clip(tmp_path)
    assert isinstance(wrapped, TensorFeaturesCLIP)
    images = torch.rand(2, 1, 32, 32) * 2 - 1  # grayscale in [-1, 1]: quantised and replicated to RGB
    a = clip_score(images, ["a coat", "a sandal"], model=tmp_path)
    b = clip_score(images, ["a coat", "a sandal"], model=clip_pair)
    assert a == pytest.approx(b, abs=1e-4)
    metric = make_clip_score(clip_pair)
    metric.update(list(((images + 1) * 127.5).round().to(torch.uint8).expand(-1, 3, -1, -1)), ["a coat", "a sandal"])
    assert float(metric.compute()) == pytest.approx(b, abs=1e-4)


def test_missing_weights_error_is_clear(tmp_path):
    with pytest.raises(CLIPWeightsNotFound, match="save_pretrained"):
        load_clip(tmp_path)  # exists, no config.json
    with pytest.raises(CLIPWeightsNotFound, match="No CLIP weights ship offline"):
        load_clip("nonexistent-org/nonexistent-clip-model")
