"""The real photos used as the demo's places."""

from __future__ import annotations

import numpy as np
import pytest

from frozen_vlm_perception.data import photos


def test_every_place_loads_as_rgb_uint8():
    images = photos.load_places()
    assert list(images) == photos.place_keys()
    assert 4 <= len(images) <= 6
    for key, image in images.items():
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, key
        assert min(image.shape[:2]) >= 200, key
        assert image.std() > 20, key  # a real photo, not a blank


def test_places_are_distinct_and_described():
    keys = photos.place_keys()
    phrases = [photos.place_phrase(k) for k in keys]
    assert len(set(keys)) == len(keys) and len(set(phrases)) == len(phrases)
    images = photos.load_places()
    means = [tuple(np.round(im.reshape(-1, 3).mean(0))) for im in images.values()]
    assert len(set(means)) == len(means)
    with pytest.raises(KeyError, match="unknown place"):
        photos.place_phrase("beach")
