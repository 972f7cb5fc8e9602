"""Images as documents: decoded with Pillow (EXIF orientation applied, the first frame of
an animation, RGB), checked before decoding (file size, pixel count: a decompression bomb
is refused from its header), with a small JPEG thumbnail made for the search page.

An image that cannot be used raises `ImageError` with a reason the embed job quarantines
the row under: `missing_image`, `unreadable_image`, `not_an_image`, `truncated_image`,
`bad_image`, `image_too_large`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGE = "image"  # the column of an image set holding the original file's bytes
THUMBNAIL = "thumbnail"  # ... and the one holding its thumbnail (JPEG)
IMAGE_COLUMNS = (IMAGE, THUMBNAIL)
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"})
MAX_IMAGE_BYTES = 32 * 1024 * 1024  # one image file
MAX_IMAGE_PIXELS = 64_000_000  # width x height, read from the header before decoding
THUMBNAIL_SIDE = 128  # pixels, the longer side
THUMBNAIL_MAX_BYTES = 24 * 1024


class ImageError(ValueError):
    """An image that cannot be embedded; `reason` is the quarantine reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedImage:
    """An image ready for the model, with its thumbnail (None when not asked for)."""

    image: Image
    thumbnail: bytes | None


def decode_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image:
    """`data` as an RGB Pillow image, upright (EXIF orientation applied); the first
    frame of an animated GIF or WebP. Raises ImageError naming what is wrong."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(
            "image_too_large", f"{len(data)} bytes; the cap is {MAX_IMAGE_BYTES} per image"
        )
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > max_pixels:
            raise ImageError(
                "image_too_large",
                f"{img.width}x{img.height} pixels (a decompression bomb?); the cap is {max_pixels}",
            )
        img.seek(0)
        img.load()
        upright = ImageOps.exif_transpose(img)
        return upright.convert("RGB")
    except UnidentifiedImageError as e:
        raise ImageError(
            "not_an_image", "not a file Pillow reads as an image (JPEG, PNG, WebP, GIF, ...)"
        ) from e
    except Image.DecompressionBombError as e:
        raise ImageError("image_too_large", str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, ImageError):
            raise
        reason = "truncated_image" if "truncated" in str(e).lower() else "bad_image"
        raise ImageError(reason, f"{type(e).__name__}: {e}") from None


def make_thumbnail(image: Image, *, side: int = THUMBNAIL_SIDE) -> bytes:
    """A JPEG of `image` at most `side` pixels on its longer side and at most
    THUMBNAIL_MAX_BYTES (the quality is lowered until it fits)."""
    small = image.copy()
    small.thumbnail((side, side))
    for quality in (80, 60, 40, 20):
        out = io.BytesIO()
        small.save(out, format="JPEG", quality=quality)
        if out.tell() <= THUMBNAIL_MAX_BYTES:
            return out.getvalue()
    raise ImageError("bad_image", f"no {side}px JPEG thumbnail under {THUMBNAIL_MAX_BYTES} bytes")


def load_image(data: bytes, *, thumbnail: bool = True) -> DecodedImage:
    """An image file's bytes, decoded and (with `thumbnail`) with its thumbnail."""
    image = decode_image(data)
    return DecodedImage(image, make_thumbnail(image) if thumbnail else None)


def image_reader(read: Callable[[str], bytes]) -> Callable[[str], bytes]:
    """`read` with its failures as ImageErrors (a path that is missing or unreadable)."""

    def reader(path: str) -> bytes:
        try:
            return read(path)
        except FileNotFoundError as e:
            raise ImageError("missing_image", f"no file at {path!r}: {e}") from None
        except (OSError, ValueError) as e:
            raise ImageError("unreadable_image", f"{path!r}: {type(e).__name__}: {e}") from None

    return reader
