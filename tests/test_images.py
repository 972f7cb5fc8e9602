"""Images (issue 27), groundwork: the pinned stack loads a locally made CLIP as one
sentence-transformers model that embeds both images and text."""

from __future__ import annotations

import numpy as np
import pytest

from .tiny_clip import make_tiny_clip


def test_a_tiny_clip_embeds_images_and_text_in_one_space(tmp_path, monkeypatch):
    """Made twice from one seed, the tiny CLIP gives the same vectors; an image and a
    caption land in one 16-d space; distinct images get distinct vectors; saved again
    by sentence-transformers it reloads to the same vectors."""
    from PIL import Image
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a = SentenceTransformer(str(make_tiny_clip(tmp_path / "a", seed=3)), device="cpu")
    b = SentenceTransformer(str(make_tiny_clip(tmp_path / "b", seed=3)), device="cpu")
    red, blue = Image.new("RGB", (48, 40), (220, 20, 20)), Image.new("RGB", (48, 40), (20, 20, 220))
    images, captions = a.encode([red, blue]), a.encode(["a red square", "a blue square"])
    assert images.shape == captions.shape == (2, 16)
    assert np.allclose(images, b.encode([red, blue]), atol=1e-6)
    assert not np.allclose(images[0], images[1], atol=1e-3)
    a.save(str(tmp_path / "st"))
    again = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert np.allclose(again.encode([red, blue]), images, atol=1e-6)
    assert np.allclose(again.encode(["a red square"]), captions[:1], atol=1e-6)
    with pytest.raises((TypeError, ValueError)):
        a.encode([object()])  # neither text nor image
