"""Real photographs used as the demo's "places" (shipped inside scikit-image, no download).

Each place has a stable ``key`` (what the demo bag's /ground_truth/place topic carries) and a short
``phrase`` describing honestly what the photo shows, for text answers ("I am walking by a cup of
coffee"). The photos are real; the robot "being there" is the demo's fiction (see demo_bag.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Place:
    key: str  # stable id, e.g. "coffee"
    phrase: str  # where the robot is, for text: "by a cup of coffee"
    loader: str  # skimage.data function that loads the photo
    credit: str  # what the photo is (scikit-image's own description)


PLACES: tuple[Place, ...] = (
    Place("coffee", "at a table with a cup of coffee", "coffee", "a cup of espresso on a wooden table"),
    Place("cat", "next to a cat", "chelsea", "Chelsea the cat, close up"),
    Place("astronaut", "next to an astronaut", "astronaut", "astronaut Eileen Collins in a spacesuit"),
    Place("rocket", "at a rocket launch pad", "rocket", "a Falcon 9 rocket on its launch pad at dusk"),
    Place("motorcycle", "in a garage with a red motorcycle", "stereo_motorcycle", "a motorcycle in a garage"),
)
PLACES_BY_KEY: dict[str, Place] = {p.key: p for p in PLACES}


def place_keys() -> list[str]:
    return [p.key for p in PLACES]


def place_phrase(key: str) -> str:
    """The text phrase of a place key ("coffee" -> "at a table with a cup of coffee")."""
    return _place(key).phrase


def _place(key: str) -> Place:
    if key not in PLACES_BY_KEY:
        raise KeyError(f"unknown place {key!r}; known: {place_keys()}")
    return PLACES_BY_KEY[key]


@functools.cache
def _load(key: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, _place(key).loader)()
    if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
        image = image[0]
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] < 3 or image.dtype != np.uint8:
        raise ValueError(f"photo {key!r} is not an RGB uint8 image: {image.shape} {image.dtype}")
    image = np.ascontiguousarray(image[:, :, :3])
    image.setflags(write=False)  # cached and shared
    return image


def load_place_image(key: str) -> np.ndarray:
    """The photo of a place as a read-only (H, W, 3) uint8 RGB array (cached in memory)."""
    return _load(key)


def load_places(keys: list[str] | tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """{key: (H, W, 3) uint8 RGB} for ``keys`` (default: all places)."""
    return {key: load_place_image(key) for key in (keys or place_keys())}
