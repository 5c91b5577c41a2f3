import io

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import make_photo, write_image
from featx.images import ImageError, center_crop_resize, load_image


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp", ".webp", ".tiff"])
def test_formats_decode_to_rgb8(tmp_path, suffix):
    rgb = make_photo(1)
    path = write_image(tmp_path / f"a{suffix}", rgb)
    out = load_image(path)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    tol = 3 if suffix in (".jpg", ".webp") else 0  # measured: 1.0 (jpg), 1.6 (webp) at default quality
    assert np.abs(out.astype(int) - rgb).mean() <= tol
    # channel order: the picture is 48 (mean) from its own BGR swap, so a swapped decode cannot pass
    assert np.abs(out.astype(int) - rgb[:, :, ::-1]).mean() > 30


def test_grey_16bit_and_alpha(tmp_path):
    grey = (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    out = load_image(tmp_path / "g.png")
    assert out.shape == (48, 64, 3) and (out[:, :, 0] == grey).all() and (out[:, :, 2] == grey).all()

    deep = (grey.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    assert (load_image(tmp_path / "d.png")[:, :, 1] == grey).all()

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (0, 0, 255, 255)  # opaque red (BGRA) on the left, transparent on the right
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    out = load_image(tmp_path / "a.png")
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 7]) == (255, 255, 255)  # transparent -> white


# How each EXIF orientation is displayed (the TIFF 6.0 / EXIF 2.3 definitions), written out independently
# of featx: the stored pixels `a` become what a viewer shows.
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # transposed (mirror + 90 CCW)
    6: lambda a: np.rot90(a, -1),  # rotated 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transversed (mirror + 90 CW)
    8: lambda a: np.rot90(a, 1),  # rotated 90 counter-clockwise
}

@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])  # TIFF: OpenCV applies it itself
def test_exif_orientation_is_applied_pixel_for_pixel(tmp_path, fmt):
    rgb = make_photo(2, size=(40, 80))  # landscape, and no two orientations of it look alike
    lossy = fmt in ("JPEG", "WEBP")
    for orientation, shown in DISPLAYED.items():
        im = Image.fromarray(rgb)
        exif = im.getexif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        im.save(buf, format=fmt, exif=exif, **({"quality": 95} if lossy else {}))
        (tmp_path / "o.img").write_bytes(buf.getvalue())
        out = load_image(tmp_path / "o.img").astype(int)
        expected = shown(rgb)
        assert out.shape == expected.shape, orientation
        err = np.abs(out - expected).mean()
        assert err <= (3 if lossy else 0), (orientation, err)  # measured 1.4 (jpg), 1.9 (webp)
        for other, wrong in DISPLAYED.items():  # a transpose or a wrong turn is far off, not near
            if other != orientation and wrong(rgb).shape == expected.shape:
                assert np.abs(out - wrong(rgb)).mean() > 20, (orientation, other)


def test_large_jpeg_decodes_at_reduced_size(tmp_path):
    path = write_image(tmp_path / "big.jpg", make_photo(3, size=(1000, 1600)))
    assert load_image(path).shape == (1000, 1600, 3)
    small = load_image(path, min_side=224)
    assert small.shape == (250, 400, 3)  # 1/4 scale keeps the short side >= 224
    assert load_image(path, min_side=600).shape == (1000, 1600, 3)


def test_cmyk_jpeg_keeps_its_colours(tmp_path):
    rgb = make_photo(4)
    buf = io.BytesIO()
    # Pillow writes CMYK JPEGs the way Photoshop does: inverted ink values, flagged by an Adobe APP14 marker
    Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    assert b"Adobe" in data[:200]
    (tmp_path / "cmyk.jpg").write_bytes(data)
    out = load_image(tmp_path / "cmyk.jpg").astype(int)
    assert out.shape == (48, 64, 3)
    assert np.abs(out - rgb).mean() < 3  # measured 0.95; an un-inverted decode is ~115 off, a BGR swap ~50
    assert np.abs((255 - out) - rgb).mean() > 50 and np.abs(out[:, :, ::-1] - rgb).mean() > 20


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty file"), (b"not an image at all", "not a readable image"), (None, "no such file")],
)
def test_bad_files_raise_an_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as err:
        load_image(path)
    assert str(path) in str(err.value)


def test_truncated_jpeg(tmp_path):
    path = write_image(tmp_path / "t.jpg", make_photo(5, size=(200, 300)))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(path)


def test_center_crop_resize_takes_the_centre():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255  # the central square is white
    out = center_crop_resize(img, 32, 1.0)
    assert out.shape == (32, 32, 3) and out.min() == 255
