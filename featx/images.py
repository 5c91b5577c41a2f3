"""Decode any image file to 8-bit RGB, the single entry point for pixels.

OpenCV does the decoding; the header (format, size, bit depth, JPEG sampling)
is read first, without decoding, so that

* anything that is not one of the accepted formats is refused by its first
  bytes (its *signature*), whatever its name says;
* every format gets the pixel limit (``max_pixels``, declared size), and every
  decode gets a memory budget (``budget``): the bytes the decode will need are
  estimated from the header (:func:`decode_cost`) and the file is refused when
  they exceed the budget;
* large JPEGs are decoded at 1/2, 1/4 or 1/8 scale (cheaper in time and memory).

Memory bound for one decode (documented budget, tested in tests/test_hostile.py):
peak extra memory <= ``decode_cost(...)`` <= ``budget`` (default
:data:`DECODE_BUDGET`, 1 GiB), where ``decode_cost`` counts the decoded array
at its own depth and channels, the 8-bit RGB result when a conversion is
needed, and libjpeg's full-size coefficient buffer for progressive JPEGs.
16-bit, float and alpha images are converted band by band, so the conversion
never makes a full-resolution float copy.  Files larger than ``max_bytes``
(:data:`MAX_FILE_BYTES`) are refused before they are read.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

from featx.errors import FeatxError


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise FeatxError(f"{name}={os.environ[name]!r}: expected a number") from None


#: Images declaring more pixels than this are refused (decompression bombs), every format
#: (environment: FEATX_MAX_PIXELS).
MAX_PIXELS = int(_env_number("FEATX_MAX_PIXELS", 120_000_000))
# OpenCV's own limit, a second line behind the header check (read when cv2 is first imported).
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
# libtiff's warnings about odd but readable files are not the user's business
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

# Pillow only reads headers here; its bomb warning would leak to stderr for every large
# photo (the limit is ours, applied below).  A filter, not catch_warnings: decoding runs
# in threads, and catch_warnings is not thread-safe.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

#: Peak extra memory one decode may need, bytes (see :func:`decode_cost`); environment:
#: FEATX_MAX_DECODE_MB (default 1024).  ``featx serve`` has its own, lower limits.
DECODE_BUDGET = int(_env_number("FEATX_MAX_DECODE_MB", 1024) * 2**20)
#: Files larger than this are refused before being read.
MAX_FILE_BYTES = 256 * 1024 * 1024

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
#: remembered decode failures are keyed by it.  3: signature before decoding, memory budget, NaN floats.
LOADER_VERSION = "3"

# decoder working memory beyond the arrays (measured 2-3 MiB); the first decode in a process also
# initialises the codecs (about 20 MiB, once)
_FIXED_COST = 8 << 20
_REDUCED_FLAGS = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}
_BAND_BYTES = 1 << 20  # float32 temporaries per band of rows in the conversion (a few of them at once)


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


def read_bytes(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of one regular file, at most ``max_bytes`` of them.

    Raises
    ------
    ImageError
        missing file or broken link, folder, FIFO/device/socket (never opened for a
        blocking read), symlink loop, permission denied, or a file larger than
        ``max_bytes`` (refused from its size, before reading: a 2 GB sparse file is not read).
    """
    import errno

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        what = "a broken symbolic link" if os.path.islink(path) else "no such file"
        raise ImageError(f"{path}: {what}") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, expected an image file") from None
    except PermissionError:
        raise ImageError(f"{path}: cannot read: permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(f"{path}: a symbolic link loop") from None
        raise ImageError(f"{path}: cannot read: {(exc.strerror or str(exc)).lower()}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(f"{path}: is a folder, expected an image file")
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{path}: not a regular file ({_file_kind(info.st_mode)}); expected an image file")
        if info.st_size > max_bytes:
            raise ImageError(f"{path}: file of {info.st_size / 1e6:,.0f} MB exceeds the limit of "
                             f"{max_bytes / 1e6:,.0f} MB for one image")
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(f"{path}: cannot read: {(exc.strerror or str(exc)).lower()}") from None
    if len(data) > max_bytes:
        raise ImageError(f"{path}: file exceeds the limit of {max_bytes / 1e6:,.0f} MB for one image")
    return data


def why_not_a_file(path: str | Path) -> str:
    """Why ``path`` is not a regular file one can read: ``"broken link"``, ``"symbolic link loop"``,
    ``"FIFO"``, ``"device"``, ``"socket"``, ``"folder"``, ``"unreadable (...)"``; ``""`` when it is one."""
    import errno

    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "broken link"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"unreadable ({(exc.strerror or str(exc)).lower()})"
    if stat.S_ISREG(info.st_mode):
        return ""
    if stat.S_ISDIR(info.st_mode):
        return "folder"
    return _file_kind(info.st_mode).removeprefix("a ")


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


_KNOWN_OTHERS = (
    (b"#?RADIANCE", "a Radiance HDR image"), (b"#?RGBE", "a Radiance HDR image"),
    (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a zip archive"), (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 codestream"), (b"II+\x00", "a BigTIFF image"), (b"MM\x00+", "a BigTIFF image"),
    (b"8BPS", "a Photoshop document"), (b"\x76\x2f\x31\x01", "an OpenEXR image"), (b"<", "text (HTML, SVG or XML)"),
    (b"\x1f\x8b", "a gzip file"),
)


def _what_it_is(data: bytes) -> str:
    for sig, name in _KNOWN_OTHERS:
        if data.startswith(sig):
            return name
    if data[4:8] == b"ftyp":
        return "an ISO media file (HEIC, AVIF or video)"
    if data[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7"):
        return "a PNM image"
    return ""


class Header:
    """What the first bytes say: format, declared size, decoded depth and channels.

    Attributes
    ----------
    format : str
        ``"JPEG"``, ``"PNG"``, ``"BMP"``, ``"WEBP"``, ``"TIFF"`` or ``"GIF"`` (:data:`FORMATS`, upper case).
    width, height : int
        declared size, pixels.
    channels : int
        channels of the array OpenCV decodes to (1, 3 or 4).
    sample_bytes : int
        bytes per channel of that array (1, 2, 4 or 8).
    jpeg_density : float
        JPEG only: coded samples per pixel (3.0 for 4:4:4, 1.5 for 4:2:0), for libjpeg's coefficient buffer.
    """

    __slots__ = ("format", "width", "height", "channels", "sample_bytes", "jpeg_density")

    def __init__(self, format, width, height, channels=3, sample_bytes=1, jpeg_density=0.0):
        self.format, self.width, self.height = format, int(width), int(height)
        self.channels, self.sample_bytes, self.jpeg_density = int(channels), int(sample_bytes), float(jpeg_density)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def __repr__(self):
        return (f"Header({self.format} {self.width}x{self.height}, {self.channels} ch x {self.sample_bytes} B)")


def header(data: bytes, source: str = "<bytes>") -> Header:
    """Read format and size from the first bytes, decoding no pixels.

    Raises
    ------
    ImageError
        empty data, a signature outside the accepted formats (named when recognised, e.g.
        a Radiance HDR file called ``.jpg``), or a header too damaged to give the size.
    """
    if not data:
        raise ImageError(f"{source}: empty file (0 bytes)")
    found = sniff_format(data)
    if found is None:
        what = _what_it_is(data[:16])
        if what:
            raise ImageError(f"{source}: not a readable image: the content is {what}, and featx reads only "
                             f"{FORMAT_NAMES} (whatever the file name says)")
        raise ImageError(f"{source}: not a readable image (its first bytes are none of {FORMAT_NAMES})")
    fmt = found.name.upper()
    info = None
    try:
        if fmt == "PNG":
            info = _png_header(data)
        elif fmt == "TIFF":
            info = _tiff_header(data)
        else:
            info = _pillow_header(data, fmt)
    except (struct.error, ValueError, IndexError, OSError, SyntaxError, EOFError, KeyError, TypeError):
        info = None
    except Image.DecompressionBombError:
        raise ImageError(f"{source}: image dimensions are too large to decode safely") from None
    if info is None or info.width <= 0 or info.height <= 0:
        raise ImageError(f"{source}: not a readable image: damaged {fmt} header (no image size); the file is "
                         "corrupt or truncated")
    return info


def _png_header(data: bytes) -> Header | None:
    if data[12:16] != b"IHDR":
        return None
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    channels = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}.get(color)
    if channels is None or depth not in (1, 2, 4, 8, 16):
        return None
    return Header("PNG", width, height, channels, 2 if depth == 16 else 1)


def _tiff_header(data: bytes) -> Header | None:
    """First IFD of a classic TIFF: width, height, samples per pixel, bits per sample."""
    bo = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(bo + "I", data[4:8])
    (count,) = struct.unpack(bo + "H", data[ifd : ifd + 2])
    sizes = {1: 1, 3: 2, 4: 4}
    tags = {}
    for i in range(count):
        tag, typ, n, raw = struct.unpack(bo + "HHI4s", data[ifd + 2 + 12 * i : ifd + 14 + 12 * i])
        if tag not in (256, 257, 258, 277) or typ not in sizes:
            continue
        size = sizes[typ]
        where = raw if n * size <= 4 else data[struct.unpack(bo + "I", raw)[0]:][:size]
        tags[tag] = struct.unpack(bo + {1: "B", 2: "H", 4: "I"}[size], where[:size])[0]
    if 256 not in tags or 257 not in tags:
        return None
    spp = tags.get(277, 1)
    bits = tags.get(258, 1)
    if not 1 <= spp <= 16 or not 1 <= bits <= 64:
        return None
    # OpenCV decodes 8-bit TIFFs to BGR(A); deeper ones keep their samples
    channels = 4 if spp >= 4 else (3 if spp >= 2 else 1)
    return Header("TIFF", tags[256], tags[257], max(channels, 3) if bits <= 8 else channels,
                  max(1, (bits + 7) // 8))


def _pillow_header(data: bytes, fmt: str) -> Header:
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
        if fmt == "JPEG":
            layers = getattr(im, "layer", None) or []
            hmax = max((l[1] for l in layers), default=1) or 1
            vmax = max((l[2] for l in layers), default=1) or 1
            density = sum(l[1] * l[2] for l in layers) / (hmax * vmax) if layers else 4.0
            return Header("JPEG", width, height, 3, 1, density)
        if fmt in ("WEBP", "GIF"):  # GIF: Pillow's first frame as RGBA
            return Header(fmt, width, height, 4, 1)
        return Header(fmt, width, height, 3, 1)


def reduction(info: Header, min_side: int | None) -> int:
    """The JPEG scale denominator (1, 2, 4 or 8) that keeps the short side >= ``min_side``."""
    if info.format != "JPEG" or not min_side:
        return 1
    short = min(info.width, info.height)
    return next((f for f in _REDUCED_FLAGS if short // f >= min_side), 1)


def decode_cost(info: Header, min_side: int | None = None) -> int:
    """Upper estimate of the extra memory (bytes) decoding this image takes at its peak.

    Twice the decoded array (at the reduced JPEG scale, with its own channels and depth:
    OpenCV's ``imdecode`` holds a second copy while it returns, measured on every format);
    the 8-bit RGB result when a conversion is needed; for JPEG, libjpeg's coefficient
    buffer (2 bytes per coded sample at full size, needed by progressive and multi-scan
    files); for WebP, libwebp's own full-size ARGB buffer (lossless files).
    """
    f = reduction(info, min_side)
    px = -(-info.width // f) * -(-info.height // f)
    cost = _FIXED_COST + 2 * px * info.channels * info.sample_bytes
    if info.channels != 3 or info.sample_bytes != 1:
        cost += px * 3
    if info.format == "JPEG":
        cost += int(2 * info.jpeg_density * info.pixels)
    if info.format == "WEBP":
        cost += 4 * info.pixels
    if info.format == "TIFF":
        cost += px * max(4, info.channels * info.sample_bytes)
    if info.format == "GIF":
        cost += px  # the palette image Pillow decodes before converting
    return cost


def check_limits(info: Header, source: str, min_side: int | None = None, max_pixels: int = MAX_PIXELS,
                 budget: int = DECODE_BUDGET) -> None:
    """Raise :class:`ImageError` when the declared size or the decode's memory exceed the limits."""
    if info.pixels > max_pixels:
        raise ImageError(f"{source}: {info.width}x{info.height} pixels exceeds the limit of {max_pixels:,}; "
                         "downscale the image first")
    cost = decode_cost(info, min_side)
    if cost > budget:
        what = f"{8 * info.sample_bytes}-bit " if info.sample_bytes > 1 else ""
        raise ImageError(
            f"{source}: decoding this {info.width}x{info.height} {what}{info.format} image would need about "
            f"{cost / 2**20:,.0f} MiB, over the budget of {budget / 2**20:,.0f} MiB per image; "
            "downscale it (or save it as JPEG, which decodes at reduced size)")


def _to_rgb8(img: np.ndarray, source: str = "<bytes>") -> np.ndarray:
    """OpenCV's decoded array (BGR/BGRA/grey, any depth) -> 8-bit RGB, band by band.

    16-bit keeps its high byte; float and other depths are scaled min..max to 0..255
    (NaN or infinite values are refused); alpha is composited over white.  Temporary
    arrays never exceed one band of rows (about ``_BAND_BYTES`` each).
    """
    if img.ndim == 2:
        img = img[:, :, None]
    h, w, c = img.shape
    rows = max(1, _BAND_BYTES // (w * c * 4))
    if img.dtype == np.uint8 and c == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)  # in place: no second copy
    scale = shift = None
    if img.dtype not in (np.uint8, np.uint16):
        lo, hi = np.inf, -np.inf
        for r in range(0, h, rows):
            band = img[r : r + rows]
            if band.dtype.kind == "f" and not np.isfinite(band).all():
                raise ImageError(f"{source}: floating-point image with NaN or infinite values; cannot map it "
                                 "to 8-bit colours (save it as an 8- or 16-bit image)")
            lo, hi = min(lo, float(band.min())), max(hi, float(band.max()))
        scale = 255.0 / (hi - lo) if hi - lo > np.finfo(np.float64).eps else 0.0
        shift = -lo * scale
    out = np.empty((h, w, 3), np.uint8)
    for r in range(0, h, rows):
        band = img[r : r + rows]
        if band.dtype == np.uint16:
            band = (band >> 8).astype(np.uint8)
        elif band.dtype != np.uint8:
            band = (band.astype(np.float32) * np.float32(scale) + np.float32(shift)).astype(np.uint8)
        dst = out[r : r + rows]
        if c == 1 or c == 2:
            cv2.cvtColor(np.ascontiguousarray(band[:, :, 0]), cv2.COLOR_GRAY2RGB, dst=dst)
        elif c == 3:
            cv2.cvtColor(np.ascontiguousarray(band), cv2.COLOR_BGR2RGB, dst=dst)
        else:
            # composite over white: transparent regions are background, not black
            alpha = band[:, :, 3:4].astype(np.float32) / 255.0
            bgr = band[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
            cv2.cvtColor(bgr.round().astype(np.uint8), cv2.COLOR_BGR2RGB, dst=dst)
    return out


def decode(data: bytes, source: str = "<bytes>", min_side: int | None = None, *,
           max_pixels: int = MAX_PIXELS, budget: int = DECODE_BUDGET) -> np.ndarray:
    """Decode encoded image bytes to an ``(H, W, 3)`` uint8 RGB array, within a memory budget.

    Parameters
    ----------
    data : bytes
        the encoded file; its first bytes must be one of :data:`FORMATS`.
    source : str
        the name used in error messages.
    min_side : int, optional
        the caller needs at least this many pixels on the short side; JPEGs at least
        twice that large are decoded at 1/2, 1/4 or 1/8 scale keeping the short side >= ``min_side``.
    max_pixels : int
        declared width x height above which any image is refused.
    budget : int
        bytes one decode may take at its peak (estimated from the header by :func:`decode_cost`).

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8 RGB; EXIF orientation applied; grey, 16-bit, float and alpha
        images converted (alpha composited over white).

    Raises
    ------
    ImageError
        empty, unrecognised or damaged data, over ``max_pixels`` or ``budget``, NaN in a float image.
    """
    info = header(data, source)
    check_limits(info, source, min_side, max_pixels, budget)
    if info.format == "GIF":
        return _decode_first_frame(data, source)
    buf = np.frombuffer(data, dtype=np.uint8)
    factor = reduction(info, min_side)
    try:
        if info.format == "JPEG":
            img = cv2.imdecode(buf, _REDUCED_FLAGS[factor] if factor > 1 else cv2.IMREAD_COLOR)  # applies EXIF
        elif info.format == "BMP":
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        else:
            # PNG/TIFF/WebP may carry alpha or 16 bits: keep them, convert below
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
            if img is not None and not _opencv_orients(info.format):
                img = _apply_exif_orientation(img, _exif_orientation(data, info.format))
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise ImageError(f"{source}: not a readable image (corrupt, truncated or unsupported {info.format} variant)")
    return _to_rgb8(img, source)


def _decode_first_frame(data: bytes, source: str) -> np.ndarray:
    """A GIF's first frame, transparency composited over white like every other format."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            rgba = np.asarray(im.convert("RGBA"))
    except Exception:  # noqa: BLE001 - Pillow raises many types for junk
        raise ImageError(f"{source}: not a readable image (corrupt, truncated or unsupported format)") from None
    return _to_rgb8(cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA), source)


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


def _exif_orientation(data: bytes, fmt: str) -> int:
    """EXIF orientation (1..8) from the header, without decoding pixels (Pillow's PNG
    ``getexif`` would decode the whole image to look for a trailing eXIf chunk)."""
    try:
        if fmt == "PNG":
            pos = 8
            while pos + 8 <= len(data):
                (length,) = struct.unpack(">I", data[pos : pos + 4])
                kind = data[pos + 4 : pos + 8]
                if kind == b"eXIf":
                    exif = Image.Exif()
                    exif.load(data[pos + 8 : pos + 8 + length])
                    return int(exif.get(0x0112, 1))
                if kind == b"IEND":
                    return 1
                pos += 12 + length
            return 1
        with Image.open(io.BytesIO(data)) as im:
            return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - Pillow raises many types for junk; orientation is optional
        return 1


def _apply_exif_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
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


def load_image(path: str | Path, min_side: int | None = None, *, max_pixels: int = MAX_PIXELS,
               budget: int = DECODE_BUDGET) -> np.ndarray:
    """Read and decode one image file to ``(H, W, 3)`` uint8 RGB (see :func:`decode`)."""
    return decode(read_bytes(path), str(path), min_side, max_pixels=max_pixels, budget=budget)


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
