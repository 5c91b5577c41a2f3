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
    tol = 12 if suffix in (".jpg", ".webp") else 0
    assert np.abs(out.astype(int) - rgb).mean() <= tol
    # channel order: the red-dominant corner stays red-dominant
    assert np.argmax(out[0, 0]) == np.argmax(rgb[0, 0]) or tol


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


def test_exif_orientation_is_applied(tmp_path):
    rgb = make_photo(2, size=(40, 80))  # landscape pixels
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    assert load_image(tmp_path / "rot.jpg").shape == (80, 40, 3)


def test_large_jpeg_decodes_at_reduced_size(tmp_path):
    path = write_image(tmp_path / "big.jpg", make_photo(3, size=(1000, 1600)))
    assert load_image(path).shape == (1000, 1600, 3)
    small = load_image(path, min_side=224)
    assert small.shape == (250, 400, 3)  # 1/4 scale keeps the short side >= 224
    assert load_image(path, min_side=600).shape == (1000, 1600, 3)


def test_cmyk_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(make_photo(4)).convert("CMYK").save(buf, format="JPEG")
    (tmp_path / "cmyk.jpg").write_bytes(buf.getvalue())
    out = load_image(tmp_path / "cmyk.jpg")
    assert out.shape == (48, 64, 3)


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
