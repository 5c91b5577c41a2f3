"""Decode any image file to 8-bit RGB, the single entry point for pixels.

OpenCV does the decoding; Pillow only reads the header (size, format) so that
large JPEGs can be decoded at 1/2, 1/4 or 1/8 scale, which is several times
cheaper and matters because decoding competes with the network for the CPU.
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from featx.errors import FeatxError



@dataclass(frozen=True)
class ImageFormat:
    """One accepted file format: its name, file suffixes and leading-byte signatures."""

    name: str
    suffixes: tuple[str, ...]
    signatures: tuple[bytes, ...]
    exif: bool  # whether the format can carry an EXIF orientation tag

    def matches(self, data: bytes) -> bool:
        if self.name == "WebP":
            return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
        return data.startswith(self.signatures)


#: The one list of accepted formats, shared by the folder scanner (suffixes), ``predict``,
#: ``serve`` and the decoder (signatures).  GIF is read as its first frame, like animated
#: WebP and APNG.
FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("JPEG", (".jpg", ".jpeg", ".jpe", ".jfif"), (b"\xff\xd8\xff",), True),
    ImageFormat("PNG", (".png",), (b"\x89PNG\r\n\x1a\n",), True),
    ImageFormat("BMP", (".bmp",), (b"BM",), False),
    ImageFormat("WebP", (".webp",), (b"RIFF",), True),
    ImageFormat("TIFF", (".tif", ".tiff"), (b"II*\x00", b"MM\x00*"), True),
    ImageFormat("GIF", (".gif",), (b"GIF87a", b"GIF89a"), False),
)
IMAGE_SUFFIXES = frozenset(s for f in FORMATS for s in f.suffixes)
FORMAT_NAMES = ", ".join(f.name for f in FORMATS)

#: Bump when a change to decoding can turn a file that failed into one that decodes (or back):
#: remembered decode failures are keyed by it.
LOADER_VERSION = "2"

#: Images with more pixels than this are refused (decompression bombs).
MAX_PIXELS = 120_000_000

_REDUCED_FLAGS = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}


class ImageError(FeatxError):
    """An image file that cannot be turned into pixels."""


def is_image_path(path: str | Path) -> bool:
    """Whether the scanner takes ``path``: its suffix is one of :data:`FORMATS`' (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def sniff_format(data: bytes) -> ImageFormat | None:
    """The accepted format ``data`` is in, judged by its first bytes; None when it is none of them."""
    return next((f for f in FORMATS if f.matches(data)), None)


def looks_like_image(data: bytes) -> bool:
    """By its first bytes: one of the formats featx decodes (not a client's content type)."""
    return sniff_format(data) is not None


def read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, expected an image file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _header(data: bytes, source: str) -> tuple[str, int, int]:
    """Format and size from the header alone (no pixel decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return (im.format or "").upper(), im.size[0], im.size[1]
    except Image.DecompressionBombError:
        raise ImageError(f"{source}: image dimensions are too large to decode safely") from None
    except Exception:  # noqa: BLE001 - Pillow raises many types for junk
        return "", 0, 0


def _to_rgb8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        # composite over white: transparent regions are background, not black
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        bgr = img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return cv2.cvtColor(bgr.round().astype(np.uint8), cv2.COLOR_BGR2RGB)
    if img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode(data: bytes, source: str = "<bytes>", min_side: int | None = None) -> np.ndarray:
    """Decode encoded image bytes to an ``(H, W, 3)`` uint8 RGB array.

    ``min_side``: the caller needs at least this many pixels on the short side;
    JPEGs at least twice that large are decoded at a reduced scale that keeps
    the short side >= ``min_side``.  EXIF orientation is applied; grey,
    16-bit and alpha images become 8-bit RGB (alpha composited over white).
    """
    if not data:
        raise ImageError(f"{source}: empty file (0 bytes)")
    fmt, width, height = _header(data, source)
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{source}: {width}x{height} pixels exceeds the limit of {MAX_PIXELS:,}; "
            "downscale the image first"
        )
    if sniff_format(data) is None:
        raise ImageError(f"{source}: not a readable image (its first bytes are none of {FORMAT_NAMES})")
    if fmt == "GIF":
        return _decode_first_frame(data, source)
    buf = np.frombuffer(data, dtype=np.uint8)
    img = None
    if fmt in ("JPEG", "MPO") and min_side:
        short = min(width, height)
        for factor, flag in _REDUCED_FLAGS.items():
            if short // factor >= min_side:
                img = cv2.imdecode(buf, flag)
                break
    if img is None and fmt in ("JPEG", "MPO", "BMP", ""):
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # applies EXIF orientation
    if img is None:
        # PNG/TIFF/WebP may carry alpha or 16 bits: keep them, convert below
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if img is not None and not _opencv_orients(fmt):
            img = _apply_exif_orientation(img, data)
    if img is None or img.size == 0:
        raise ImageError(f"{source}: not a readable image (corrupt, truncated or unsupported format)")
    return _to_rgb8(img)


def _decode_first_frame(data: bytes, source: str) -> np.ndarray:
    """A GIF's first frame, transparency composited over white like every other format."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            rgba = np.asarray(im.convert("RGBA"))
    except Exception:  # noqa: BLE001 - Pillow raises many types for junk
        raise ImageError(f"{source}: not a readable image (corrupt, truncated or unsupported format)") from None
    return _to_rgb8(cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))


@functools.lru_cache(maxsize=None)
def _opencv_orients(fmt: str) -> bool:
    """Whether OpenCV's ``IMREAD_UNCHANGED`` already applies the EXIF orientation for ``fmt``.

    It does for TIFF (libtiff) but not for PNG or WebP, and that has changed between OpenCV
    releases; asked once per format with a 2x3 probe, so that a photo is turned upright exactly once.
    """
    probe = Image.fromarray(np.zeros((2, 3, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    try:
        probe.save(buf, fmt, exif=exif.tobytes(), **({"lossless": True} if fmt == "WEBP" else {}))
        img = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)
    except Exception:  # noqa: BLE001 - a format Pillow cannot write: featx applies the tag itself
        return False
    return img is not None and img.shape[:2] == (3, 2)


def _apply_exif_orientation(img: np.ndarray, data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001
        return img
    ops = {
        2: lambda a: cv2.flip(a, 1),
        3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
        4: lambda a: cv2.flip(a, 0),
        5: lambda a: cv2.flip(cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE), 1),
        6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
        7: lambda a: cv2.flip(cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE), 1),
        8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
    }
    return ops[orientation](img) if orientation in ops else img


def load_image(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Read and decode one image file to ``(H, W, 3)`` uint8 RGB."""
    return decode(read_bytes(path), str(path), min_side)


def center_crop_resize(img: np.ndarray, size: int, crop_fraction: float) -> np.ndarray:
    """Crop the centre square of side ``crop_fraction * short side``, resize to ``size``.

    This is the standard ImageNet evaluation transform; area interpolation
    when shrinking (it anti-aliases), bicubic when enlarging.
    """
    h, w = img.shape[:2]
    side = max(1, int(round(min(h, w) * crop_fraction)))
    top, left = (h - side) // 2, (w - side) // 2
    crop = img[top : top + side, left : left + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interp)
