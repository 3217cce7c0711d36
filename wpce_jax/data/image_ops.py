"""JPEG decode + crop + resize for training and evaluation, with two interchangeable decoders.

Both decoders use the JPEG DCT-domain downscaling (1/2, 1/4, 1/8) whenever the crop still has at least the
output resolution afterwards: a large source image is never fully decoded just to be shrunk. Then the crop box is
resampled to the output size by one of two resizers:
    "pil"     one PIL resample over the crop box (sub-pixel exact, antialiased, no intermediate image), bicubic
              (TRAIN_RESAMPLE, EVAL_RESAMPLE). Evaluation crops always use it: imported CLIP weights expect PIL's
              bicubic preprocessing.
    "opencv"  training crops only (TRAIN_RESIZER): the box rounded to whole pixels of the decoded image, then one
              cv2.resize, INTER_CUBIC, or INTER_AREA (antialiased) when both sides shrink by more than AREA_ABOVE.
              About 9x cheaper than PIL's bicubic on 256-pixel sources (benchmarks/pipeline.py --breakdown).

Decoders (chosen by ``benchmarks/pipeline.py``; see DEFAULT_DECODER):
    "pil"         Pillow's libjpeg(-turbo) via Image.draft.
    "simplejpeg"  simplejpeg (libjpeg-turbo, decodes straight into a numpy array, releases the GIL).
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance

# ImageNet statistics on the [0, 1] scale (CLIP-style normalisation as in the paper's recipe).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_OFFSET = (IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)
# OpenAI CLIP's statistics: its weights (and open_clip's / transformers' copies of them) expect these.
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
PIXEL_STATS = {"imagenet": (_SCALE, _OFFSET),
               "clip": ((1.0 / (255.0 * CLIP_STD)).astype(np.float32), (CLIP_MEAN / CLIP_STD).astype(np.float32))}

DECODERS = ("pil", "simplejpeg")
# Measured by benchmarks/pipeline.py (decode + RandomResizedCrop + normalise of 256-pixel JPEGs).
DEFAULT_DECODER = "simplejpeg"

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in source pixels

# With the PIL resizer (RESIZERS), training crops resample bicubically, like evaluation crops. Bilinear was
# measured: it makes the whole pipeline about 1.2x faster per core (the resize is most of an example's CPU,
# benchmarks/pipeline.py --breakdown and --compare), but the default digits run trained with it lost accuracy
# (image->image MAP@R 0.695 -> 0.518, linear probe 0.975 -> 0.955, zero-shot 0.969 -> 0.961, same seed and steps;
# one seed, and that MAP@R varies 0.59 to 0.71 over seeds), so it is not used.
TRAIN_RESAMPLE = Image.Resampling.BICUBIC
EVAL_RESAMPLE = Image.Resampling.BICUBIC

RESIZERS = ("pil", "opencv")
# The training crops' resizer (see the module docstring; docs/performance.md has the measurements). OpenCV: the
# whole input pipeline ~2.5x cheaper per image (1000+ images/s per core); the default digits run, seeds 0 to 3,
# mean final metrics OpenCV / PIL bicubic: zero-shot 0.973 / 0.975, linear probe 0.982 / 0.976, i2t R@1
# 0.980 / 0.976, image->image MAP@R 0.703 / 0.676 (PIL's seeds spread 0.59 to 0.71): within seed noise.
TRAIN_RESIZER = "opencv"
# opencv resizer: INTER_AREA (a box filter over the source pixels each output pixel covers: antialiased) when both
# sides of the crop shrink by more than this factor, else INTER_CUBIC (a = -0.75, not antialiased). Against PIL's
# antialiased bicubic on photos (benchmarks/pipeline.py --resample_check, "by shrink factor") the cubic is closer
# up to a 1.1x shrink (mean 0.9 grey levels against INTER_AREA's 1.1) and INTER_AREA beyond (1.2x: 1.1 against
# 1.4; 1.5x: 1.1 against 2.8). One call takes one interpolation for both sides, so a crop that shrinks on one
# side and enlarges on the other (aspect 3/4..4/3: at most a 1.34x shrink) takes the cubic. The DCT-domain
# downscale (_dct_scale) leaves shrinks below 2x.
AREA_ABOVE = 1.15


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale: tuple[float, float] = (0.5, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
    """torchvision's RandomResizedCrop box: area fraction ~ U(scale), log aspect ~ U(log ratio), 10 tries,
    then a centre crop clamped to the ratio range."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return (left, top, left + w, top + h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return (left, top, left + w, top + h)


def center_crop_box(width: int, height: int) -> Box:
    """The central square: resizing it to S x S equals "resize the short side to S, centre-crop S"."""
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def _dct_scale(box: Box, size: int) -> int:
    """Largest JPEG downscale factor in {1, 2, 4, 8} that keeps the crop at least ``size`` pixels a side."""
    short = min(box[2] - box[0], box[3] - box[1])
    factor = 1
    while factor < 8 and short / (factor * 2) >= size:
        factor *= 2
    return factor


_CV2 = None


def _cv2():
    """OpenCV, imported at the first opencv resize (not at import: evaluation and the PIL resizer never need it),
    single-threaded: the pipeline's parallelism is over examples."""
    global _CV2
    if _CV2 is None:
        import cv2

        cv2.setNumThreads(1)
        _CV2 = cv2
    return _CV2


def _opencv_resize_box(arr: np.ndarray, box: Box, size: int) -> np.ndarray:
    """uint8 [H, W, 3] pixels, box in their coordinates -> uint8 [size, size, 3]: the box rounded to whole pixels
    (inside the image, at least one pixel), then cv2.resize (INTER_AREA or INTER_CUBIC, see AREA_ABOVE)."""
    cv2 = _cv2()
    height, width = arr.shape[:2]
    x0 = min(max(int(round(box[0])), 0), width - 1)
    y0 = min(max(int(round(box[1])), 0), height - 1)
    x1 = min(max(int(round(box[2])), x0 + 1), width)
    y1 = min(max(int(round(box[3])), y0 + 1), height)
    shrink = min(x1 - x0, y1 - y0) / size
    interpolation = cv2.INTER_AREA if shrink > AREA_ABOVE else cv2.INTER_CUBIC
    return cv2.resize(arr[y0:y1, x0:x1], (size, size), interpolation=interpolation)


def _resize_box(img: Image.Image | np.ndarray, box: Box, scale_x: float, scale_y: float, size: int,
                resample: Image.Resampling, resizer: str = "pil") -> np.ndarray:
    """Crop `box` (source pixels; the decoded image is the source shrunk by scale_x, scale_y) and resize it to
    size x size RGB, with PIL (`resample`) or OpenCV (`resizer` "opencv", see _opencv_resize_box)."""
    b = (box[0] / scale_x, box[1] / scale_y, box[2] / scale_x, box[3] / scale_y)
    if resizer == "opencv":
        if isinstance(img, Image.Image):
            img = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
        return _opencv_resize_box(img, b, size)
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    # resize(box=...) resamples only the crop with a filter sized to the true scale (antialiased).
    return np.asarray(img.resize((size, size), resample, box=b))


def _pil_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def _pil_crop_resize(data: bytes, box_fn: Callable[[int, int], Box], size: int,
                     resample: Image.Resampling, resizer: str = "pil") -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    box = box_fn(width, height)
    factor = _dct_scale(box, size)
    if factor > 1 and img.format == "JPEG":
        img.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    img.load()
    return _resize_box(img, box, width / img.size[0], height / img.size[1], size, resample, resizer)


def _simplejpeg_crop_resize(data: bytes, box_fn: Callable[[int, int], Box], size: int,
                            resample: Image.Resampling, resizer: str = "pil") -> np.ndarray:
    import simplejpeg

    if not simplejpeg.is_jpeg(data):  # records hold JPEGs; anything else takes the general path
        return _pil_crop_resize(data, box_fn, size, resample, resizer)
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    box = box_fn(width, height)
    factor = _dct_scale(box, size)
    # min_factor asks for at least this much shrink; min_height/width keep it from shrinking further.
    arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_factor=factor,
                                 min_height=math.ceil(height / factor), min_width=math.ceil(width / factor))
    return _resize_box(arr, box, width / arr.shape[1], height / arr.shape[0], size, resample, resizer)


_IMPLS = {"pil": _pil_crop_resize, "simplejpeg": _simplejpeg_crop_resize}


def _impl(decoder: str):
    try:
        return _IMPLS[decoder]
    except KeyError:
        raise ValueError(f"decoder {decoder!r} unknown; expected one of {DECODERS}") from None


def train_crop(data: bytes, size: int, rng: np.random.Generator, scale: tuple[float, float] = (0.5, 1.0),
               decoder: str = DEFAULT_DECODER, resample: Image.Resampling = TRAIN_RESAMPLE,
               resizer: str = TRAIN_RESIZER) -> np.ndarray:
    """RandomResizedCrop(size, scale) of an encoded image, resampled by `resizer` ("pil": `resample` over the exact
    box; "opencv": see _opencv_resize_box, `resample` unused). Returns uint8 [size, size, 3]."""
    if resizer not in RESIZERS:
        raise ValueError(f"resizer {resizer!r} unknown; expected one of {RESIZERS}")
    return _impl(decoder)(data, lambda w, h: random_resized_crop_box(w, h, rng, scale), size, resample, resizer)


@dataclasses.dataclass(frozen=True)
class ViewAugment:
    """SimCLR's view augmentation after the RandomResizedCrop (Chen et al. 2020, appendix A), at strength s:

    - horizontal flip with probability 0.5 (when `flip`; off for digits, whose meaning is not mirror-invariant);
    - with probability `jitter_prob` (0.8) colour jitter: brightness, contrast and saturation factors
      ~ U[1 - 0.8 s, 1 + 0.8 s], a hue shift ~ U[-0.2 s, 0.2 s] of a turn, applied in a random order
      (torchvision's ColorJitter on PIL images);
    - grayscale with probability `grayscale_prob` (0.2).
    Every draw comes from the generator passed in, so the views are a function of (seed, example) alone.
    """

    strength: float = 1.0
    flip: bool = False
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 [S, S, 3] -> uint8 [S, S, 3]. Always draws the same number of values from `rng`."""
        flip, jitter, gray = rng.uniform(size=3)
        order = rng.permutation(4)
        s = self.strength
        factors = rng.uniform(max(0.0, 1 - 0.8 * s), 1 + 0.8 * s, size=3)
        hue = rng.uniform(-0.2 * s, 0.2 * s)
        img = Image.fromarray(image)
        if self.flip and flip < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if s > 0 and jitter < self.jitter_prob:
            for op in order:
                if op < 3:
                    enhancer = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[op]
                    img = enhancer(img).enhance(float(factors[op]))
                else:
                    img = _shift_hue(img, hue)
        if gray < self.grayscale_prob:
            img = img.convert("L").convert("RGB")
        return np.asarray(img)


def _shift_hue(img: Image.Image, hue: float) -> Image.Image:
    """Rotate the hue by `hue` turns (in [-0.5, 0.5]) in HSV space, as torchvision's adjust_hue on PIL."""
    h, s, v = img.convert("HSV").split()
    shifted = (np.asarray(h, np.uint8).astype(np.int16) + int(round(hue * 255))) % 256
    return Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8), "L"), s, v)).convert("RGB")


def train_views(data: bytes, size: int, rng: np.random.Generator, augment: ViewAugment,
                scale: tuple[float, float] = (0.08, 1.0), decoder: str = DEFAULT_DECODER,
                count: int = 2, resample: Image.Resampling = TRAIN_RESAMPLE,
                resizer: str = TRAIN_RESIZER) -> list[np.ndarray]:
    """`count` independent SimCLR views of an encoded image: each a RandomResizedCrop(size, scale) followed by
    `augment`, drawn one after the other from `rng`. Returns uint8 [size, size, 3] arrays."""
    return [augment(train_crop(data, size, rng, scale, decoder, resample, resizer), rng) for _ in range(count)]


def eval_crop(data, size: int, decoder: str = DEFAULT_DECODER) -> np.ndarray:
    """Resize (short side to size, bicubic) + centre crop of an encoded image (bytes) or of decoded pixels
    (uint8 [H, W], [H, W, 1] or [H, W, 3]). Returns uint8 [size, size, 3]."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or not (data.ndim == 2 or (data.ndim == 3 and data.shape[-1] in (1, 3))):
            raise ValueError(f"pixels must be uint8 [H, W], [H, W, 1] or [H, W, 3], got {data.dtype} "
                             f"{data.shape}")
        img = Image.fromarray(data[..., 0] if data.ndim == 3 and data.shape[-1] == 1 else data)
        return _resize_box(img, center_crop_box(*img.size), 1.0, 1.0, size, EVAL_RESAMPLE)
    return _impl(decoder)(data, center_crop_box, size, EVAL_RESAMPLE)


def normalize(images, stats: str = "imagenet"):
    """uint8 [..., 3] -> float32 [..., 3], (x / 255 - mean) / std with ImageNet statistics (stats "imagenet") or
    OpenAI CLIP's ("clip"), as x * s - o in float32.
    Takes NumPy or JAX arrays: the image tower calls it on uint8 batches inside jit (models/vit.py), where it
    fuses into the patch embedding, so that hosts ship one byte per pixel instead of four."""
    scale, offset = PIXEL_STATS[stats]
    return images.astype(np.float32) * scale - offset
