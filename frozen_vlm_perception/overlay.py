"""The overlay image: a camera frame, scaled, with the activity label and the latest answer drawn on it.

ROS-free (numpy in, numpy out; Pillow's ImageDraw with its default font). The perception node
(frozen_vlm_perception/nodes/perception_node.py) calls :func:`render_overlay` for a processed frame
only while something subscribes to ``/perception/overlay``, after the frame's label is published.

Layout: a darkened band at the top with ``label  confidence  source`` (the label's colour says the
source: green fused, yellow vision-only, cyan IMU-only) and, once a question was answered, a
darkened band at the bottom with ``Q: ...`` and ``A [grounding]: ...``, wrapped to the image width
(an answer the grounding check flagged is drawn in orange). The text size follows the output
height, so a scaled-down overlay stays readable.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# The one home of overlay.scale's default (the node's parameter table takes it from here): a 640x480
# camera frame gives a 640x480 overlay, the size image viewers show without rescaling, with the text
# 16 px high. 0.5 quarters the bytes on the wire (320x240, 10 px text).
DEFAULT_SCALE = 1.0
SCALE_RANGE = (0.05, 4.0)

MIN_FONT_PX = 10
FONT_FRACTION = 1 / 30  # text height as a share of the output height (16 px at 480)
MAX_QUESTION_LINES = 2
MAX_ANSWER_LINES = 4
BAND_ALPHA = 170  # darkness of the bands behind the text (0..255)

SOURCE_COLOURS = {"fused": (120, 230, 120), "vision": (255, 220, 90), "imu": (110, 220, 255)}
TEXT_COLOUR = (245, 245, 245)
FLAGGED_COLOUR = (255, 150, 60)
MUTED_COLOUR = (190, 190, 190)


@dataclass(frozen=True)
class OverlayText:
    """What is drawn: the frame's activity label and the latest answered question (empty: none yet)."""

    label: str
    confidence: float
    source: str
    question: str = ""
    answer: str = ""
    grounding: str = ""
    flagged: bool = False


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) of the overlay for a ``width`` x ``height`` frame: rounded, at least 1 pixel."""
    return max(1, round(width * scale)), max(1, round(height * scale))


@functools.lru_cache(maxsize=8)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled TrueType font (needs FreeType)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()  # the fixed bitmap font


def wrap(text: str, font, max_width: float, max_lines: int) -> list[str]:
    """Greedy word wrap by measured pixel width; at most ``max_lines``, the last ending in '...' when cut.

    A word wider than a whole line is broken inside the word."""
    words = text.split()
    lines: list[str] = []
    line = ""
    cut = False
    while words:
        word = words.pop(0)
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= max_width:
            line = candidate
            continue
        if not line:  # a single word wider than the line: break it
            keep = max(1, _fitting_prefix(word, font, max_width))
            line, rest = word[:keep], word[keep:]
            if rest:
                words.insert(0, rest)
            continue
        lines.append(line)
        line = ""
        words.insert(0, word)
        if len(lines) == max_lines:
            cut = True
            break
    if line and len(lines) < max_lines:
        lines.append(line)
    elif line:
        cut = True
    if cut and lines:
        last = lines[-1]
        while last and font.getlength(last + "...") > max_width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "..."
    return lines


def _fitting_prefix(word: str, font, max_width: float) -> int:
    n = len(word)
    while n > 1 and font.getlength(word[:n]) > max_width:
        n -= 1
    return n


def render_overlay(frame: np.ndarray, text: OverlayText, scale: float = DEFAULT_SCALE) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB frame -> ``(round(H * scale), round(W * scale), 3)`` uint8 with the text."""
    from PIL import Image, ImageDraw

    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"the overlay needs an (H, W, 3) uint8 frame, got {frame.shape} {frame.dtype}")
    height, width = frame.shape[:2]
    size = scaled_size(width, height, scale)
    image = Image.fromarray(np.ascontiguousarray(frame), "RGB")
    if size != (width, height):  # box (area average) to shrink: fast and without aliasing
        shrink = size[0] <= width and size[1] <= height
        image = image.resize(size, Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
    out_w, out_h = size
    font, line_h, pad = _layout(out_h)
    draw = ImageDraw.Draw(image, "RGBA")  # RGBA fills blend onto the RGB frame

    # Top band: label, confidence, source (changes every frame; one short line, drawn directly).
    draw.rectangle((0, 0, out_w, line_h + 2 * pad), fill=(0, 0, 0, BAND_ALPHA))
    colour = SOURCE_COLOURS.get(text.source, TEXT_COLOUR)
    head = f"{text.label or '?'}  {text.confidence:.2f}  {text.source or '?'}"
    draw.text((pad, pad), head, font=font, fill=colour)

    # Bottom band: the latest question and answer, when there is one. It changes only when a new
    # answer arrives, so it is laid out and rendered once (cached) and pasted onto every frame.
    if text.question or text.answer:
        band = _answer_band(text.question, text.answer, text.grounding, text.flagged, out_w, out_h)
        image.paste(band, (0, out_h - band.height), band)  # its alpha blends it onto the frame
    return np.asarray(image)


@functools.lru_cache(maxsize=16)
def _answer_band(question: str, answer: str, grounding: str, flagged: bool, out_w: int, out_h: int):
    """An RGBA image ``out_w`` wide: the darkened band with ``Q: ...`` and ``A [grounding]: ...``."""
    from PIL import Image, ImageDraw

    font, line_h, pad = _layout(out_h)
    text_w = max(1, out_w - 2 * pad)
    budget = max(2, (out_h // 2 - 2 * pad) // line_h)  # at most half the image (unless it is tiny)
    q_lines = wrap(f"Q: {question}", font, text_w, min(MAX_QUESTION_LINES, budget - 1))
    tag = f" [{grounding}]" if grounding else ""
    a_lines = wrap(f"A{tag}: {answer}", font, text_w, min(MAX_ANSWER_LINES, budget - len(q_lines)))
    lines = [(line, MUTED_COLOUR) for line in q_lines]
    lines += [(line, FLAGGED_COLOUR if flagged else TEXT_COLOUR) for line in a_lines]
    band = Image.new("RGBA", (out_w, min(out_h, len(lines) * line_h + 2 * pad)), (0, 0, 0, BAND_ALPHA))
    draw = ImageDraw.Draw(band)
    for i, (line, fill) in enumerate(lines):
        draw.text((pad, pad + i * line_h), line, font=font, fill=(*fill, 255))
    return band


def _layout(out_h: int):
    """(font, line height, padding) for an overlay ``out_h`` pixels high."""
    font = _font(max(MIN_FONT_PX, round(out_h * FONT_FRACTION)))
    ascent, descent = font.getmetrics()
    line_h = ascent + descent + 2
    return font, line_h, max(2, line_h // 4)
