"""The overlay drawing (frozen_vlm_perception/overlay.py): numpy in, numpy out, no ROS."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from frozen_vlm_perception import overlay
from frozen_vlm_perception.overlay import OverlayText, render_overlay, scaled_size, wrap

LABEL_ONLY = OverlayText("walking", 0.93, "fused")
LONG_ANSWER = ("The person is walking along a corridor next to a large window with plants in it, then "
               "turns around, walks back to where they started and sits down on a chair by the door.")
WITH_ANSWER = OverlayText("walking", 0.93, "fused", "What is the person doing?", LONG_ANSWER, "agrees")


def gradient(height: int = 480, width: int = 640) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), np.full_like(xx, 128)],
                    axis=-1).astype(np.uint8)


def plain(frame: np.ndarray, scale: float) -> np.ndarray:
    """The frame scaled the way the overlay scales it, with nothing drawn."""
    height, width = frame.shape[:2]
    size = scaled_size(width, height, scale)
    if size == (width, height):
        return frame
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BOX))


def changed_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.flatnonzero((a != b).any(axis=(1, 2)))


@pytest.mark.parametrize("scale", [overlay.DEFAULT_SCALE, 0.5, 0.25, 1.5])
def test_the_scale_is_applied_and_the_result_is_rgb8(scale):
    frame = gradient()
    out = render_overlay(frame, WITH_ANSWER, scale)
    assert out.shape == (round(480 * scale), round(640 * scale), 3)
    assert out.dtype == np.uint8
    assert scaled_size(640, 480, scale) == (out.shape[1], out.shape[0])
    if scale <= 1:  # below the label band the overlay is the scaled frame itself, pixel for pixel
        lower = slice(out.shape[0] // 4, None)
        label_only = render_overlay(frame, LABEL_ONLY, scale)
        np.testing.assert_array_equal(label_only[lower], plain(frame, scale)[lower])


def test_the_default_scale_keeps_a_vga_frame_readable():
    assert scaled_size(640, 480, overlay.DEFAULT_SCALE) == (640, 480)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_the_label_band_changes_the_top_and_the_answer_band_the_bottom(scale):
    frame = gradient()
    base = plain(frame, scale)
    height = base.shape[0]
    labelled = render_overlay(frame, LABEL_ONLY, scale)
    rows = changed_rows(labelled, base)
    assert rows.size and rows.max() < height // 5, "the label band is a strip at the top"
    answered = render_overlay(frame, WITH_ANSWER, scale)
    rows = changed_rows(answered, labelled)
    assert rows.size and rows.min() >= height // 2, "the question and answer are drawn at the bottom"
    assert rows.max() == height - 1
    # The text itself, not only the band: two labels differ where the text is.
    other = render_overlay(frame, OverlayText("sitting", 0.41, "vision"), scale)
    assert changed_rows(other, labelled).size


def test_a_flagged_answer_is_drawn_differently():
    frame = gradient()
    flagged = OverlayText(*[getattr(WITH_ANSWER, f) for f in ("label", "confidence", "source", "question",
                                                             "answer")], "contradicts", True)
    assert not np.array_equal(render_overlay(frame, flagged), render_overlay(frame, WITH_ANSWER))


def test_long_answers_are_wrapped_to_the_width_and_cut_with_an_ellipsis():
    font = overlay._font(16)
    lines = wrap(LONG_ANSWER, font, 300, 10)
    assert len(lines) > 2
    assert all(font.getlength(line) <= 300 for line in lines)
    assert " ".join(lines) == LONG_ANSWER
    cut = wrap(LONG_ANSWER, font, 300, 2)
    assert len(cut) == 2 and cut[-1].endswith("...") and font.getlength(cut[-1]) <= 300
    # One word wider than the line is broken inside the word.
    assert all(font.getlength(line) <= 50 for line in wrap("x" * 40, font, 50, 10))


def test_tiny_and_odd_inputs():
    out = render_overlay(gradient(8, 8), WITH_ANSWER, 0.05)
    assert out.shape == (1, 1, 3)
    with pytest.raises(ValueError, match="uint8"):
        render_overlay(np.zeros((4, 4, 3), np.float32), LABEL_ONLY)
    with pytest.raises(ValueError):
        render_overlay(np.zeros((4, 4), np.uint8), LABEL_ONLY)
