"""``samples.png`` of image runs labels its row blocks: "teacher, NFE n" on the teacher's rows, "student, NFE K" on
the student's, in a strip left of the images."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fdistill.metrics.plots import image_grid, label_strip_width
from fdistill.train.run_eval import EvalInputs, ScorerCache, _image_metrics, grid_labels


def _rows(channels: int = 1, n: int = 16, side: int = 28) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(n, channels, side, side, generator=gen) * 2 - 1 for _ in range(2)]


def _ink_rows(strip: np.ndarray) -> np.ndarray:
    """Indices of the strip's pixel rows holding text (anything darker than the white background)."""
    gray = strip if strip.ndim == 2 else strip.min(axis=-1)
    return np.flatnonzero((gray < 128).any(axis=1))


@pytest.mark.parametrize("channels", [1, 3])
def test_labels_are_a_strip_left_of_the_unchanged_grid(channels):
    rows, labels = _rows(channels), ["teacher, NFE 18", "student, NFE 1"]
    plain, labelled = np.asarray(image_grid(rows)), np.asarray(image_grid(rows, labels=labels))
    strip = label_strip_width(labels)
    assert labelled.shape[0] == plain.shape[0] and labelled.shape[1] == plain.shape[1] + strip
    assert np.array_equal(labelled[:, strip:], plain)  # the images themselves are untouched
    ink = _ink_rows(labelled[:, :strip])
    half = plain.shape[0] // 2  # two blocks of two lines each: the teacher's on top
    assert (ink < half).any() and (ink >= half).any(), "each block needs its label"
    assert image_grid(rows, labels=[None, None]).size == image_grid(rows).size  # no labels: no strip


def test_a_wider_label_makes_a_wider_strip_and_bad_counts_are_refused():
    assert label_strip_width(["teacher, NFE 35"]) > label_strip_width(["NFE 1"])
    with pytest.raises(ValueError, match="1 labels for 2 row blocks"):
        image_grid(_rows(), labels=["student, NFE 1"])


def test_grid_labels_name_each_block_in_order():
    assert grid_labels(18, 1) == ["teacher, NFE 18", "student, NFE 1"]
    assert grid_labels(35, 3) == ["teacher, NFE 35", "student, NFE 3"]  # a K-step student
    assert grid_labels(None, 1) == ["student, NFE 1"]  # grids during training show the student only


@pytest.mark.parametrize(("final", "steps"), [(True, 1), (True, 2), (False, 1)])
def test_run_samples_png_is_labelled(tmp_path, final, steps):
    """The grid ``_image_metrics`` writes for a run: teacher rows (final only) above the student's, labelled."""
    samples = _rows()[0]
    teacher = SimpleNamespace(sample=lambda n, cond, nfe, generator, device: _rows()[1][:n])
    run = EvalInputs(
        cfg=SimpleNamespace(seed=0, teacher=SimpleNamespace(sample_nfe=18), data=SimpleNamespace(name="mnist5k")),
        teacher=teacher,
        run_dir=tmp_path,
        step=7,
        images_seen=0,
        sample=None,
        student=SimpleNamespace(steps=steps),
        device="cpu",
        scorers=ScorerCache(),
    )
    assert _image_metrics(run, samples, None, final) == {}  # no proxy FID outside Fashion-MNIST
    labels = grid_labels(18 if final else None, steps)
    path = tmp_path / ("samples.png" if final else "samples_00000007.png")
    written = np.asarray(Image.open(path))
    rows = [_rows()[1], samples] if final else [samples]
    plain = np.asarray(image_grid(rows))
    strip = label_strip_width(labels)
    assert written.shape[1] == plain.shape[1] + strip and np.array_equal(written[:, strip:], plain)
    assert len(_ink_rows(written[:, :strip])) > 0
