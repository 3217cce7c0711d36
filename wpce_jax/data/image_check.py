"""Validation of one downloaded image: decode it fully, keep it as an RGB JPEG, or say why it is dropped.

The original bytes are kept whenever they already are what the pipeline wants (a JPEG, RGB, upright, not
larger than the side cap); anything else is decoded, fixed and re-encoded once here rather than at every
training step.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# PIL's own default: a larger image is more likely a decompression bomb than a photo.
DEFAULT_MAX_PIXELS = 89_478_485
# Room for RandomResizedCrop(224, scale >= 0.5) without upsampling, and 4x fewer pixels to decode than
# the 1024-pixel originals of unresized shards.
DEFAULT_MAX_IMAGE_SIDE = 512
DEFAULT_JPEG_QUALITY = 95
_EXIF_ORIENTATION = 0x0112


class Drop(Exception):
    """The sample is dropped; ``reason`` is the manifest's counter name."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@contextlib.contextmanager
def _pixel_limit(max_pixels: int):
    """PIL's own bomb guard follows our cap while we validate (and is restored after)."""
    old = Image.MAX_IMAGE_PIXELS
    # PIL raises above 2x its limit and only warns above 1x: set it to our cap and turn warnings to errors.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit and float grey: PIL's convert clips to 8 bits instead of scaling.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I") and arr.max() > 255 else 255.0
        img = Image.fromarray((arr * (255.0 / top)).clip(0, 255).round().astype(np.uint8), "L")
    if img.mode in ("P", "PA", "LA", "La", "RGBA", "RGBa") or "transparency" in img.info:
        # Transparent pixels become white, the background a viewer would show, not whatever colour they hold.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK (PIL undoes Adobe inversion), YCbCr, LAB, HSV


def check_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_image_side: int | None = DEFAULT_MAX_IMAGE_SIDE,
                jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> tuple[bytes, int, int, str | None]:
    """Validates and normalises one encoded image.

    Returns:
      (JPEG bytes, width, height, why it was re-encoded or None when the original bytes are kept).
    Raises:
      Drop("image_unreadable"): not an image format PIL knows, or a broken header.
      Drop("image_too_many_pixels"): width * height above max_pixels (checked before decoding).
      Drop("image_corrupt"): the pixel data does not decode (truncated, corrupt).
    """
    with _pixel_limit(max_pixels):
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise Drop("image_too_many_pixels", str(e)) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
            raise Drop("image_unreadable", str(e)) from None
        width, height = img.size
        if width < 1 or height < 1:
            raise Drop("image_unreadable", f"size {width}x{height}")
        if width * height > max_pixels:
            raise Drop("image_too_many_pixels", f"{width}x{height} > {max_pixels}")
        try:
            orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # a malformed EXIF block is no reason to lose a decodable image
            orientation = 1
        too_large = max_image_side is not None and max(width, height) > max_image_side
        if img.format != "JPEG":
            why = f"not_jpeg_{(img.format or 'unknown').lower()}"
        elif img.mode != "RGB":
            why = f"not_rgb_{img.mode.lower()}"
        elif orientation not in (0, 1):
            why = "exif_orientation"
        elif too_large:
            why = "too_large"
        else:
            why = None
        if too_large and img.format == "JPEG":
            # DCT-domain downscale while decoding: a 4000-pixel photo never decodes at full size. PIL keeps
            # the result at least the requested size, so the exact resize below still only shrinks.
            scale = max_image_side / max(width, height)
            img.draft(None, (max(1, int(width * scale)), max(1, int(height * scale))))
        try:
            img.load()  # full decode: truncated or corrupt pixel data fails here
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            raise Drop("image_corrupt", str(e)) from None
        if why is None:
            return bytes(data), width, height, None
        img = _to_rgb(img)
        if orientation not in (0, 1):
            img = ImageOps.exif_transpose(img)
        if max_image_side is not None and max(img.size) > max_image_side:
            scale = max_image_side / max(img.size)
            size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
            img = img.resize(size, Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=jpeg_quality)
        return buf.getvalue(), img.size[0], img.size[1], why
