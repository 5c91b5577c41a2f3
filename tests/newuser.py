"""A new user's folder, made once per test run and shared by the documentation, API and figures tests:
``photos/`` (3 classes x 8 photo-like images whose colour cast carries the class) and ``new-photos/``
(4 images, no class folders), with a cache already holding the codes of the taps those tests read.

Why shared: each of those tests would otherwise build the network and extract the same images again;
extracting once (one network build, every tap at once) keeps their time in CI to what they check."""

from pathlib import Path

import pytest

from conftest import tinted, write_image

CLASSES = ("blue", "green", "red")
TAPS = ("pre_logits", "stage2", "stage3")


def make_photos(root: Path) -> Path:
    for c, cls in enumerate(CLASSES):
        for i in range(8):
            write_image(root / "photos" / cls / f"{cls}{i}.jpg", tinted(20 * c + i, 2 - c))
    for i in range(4):
        write_image(root / "new-photos" / f"new{i}.jpg", tinted(500 + i, i % 3))
    return root


@pytest.fixture(scope="session")
def newuser(tmp_path_factory):
    """The folder (``root``), with ``root / "cache"`` holding every image's codes of :data:`TAPS`."""
    from featx.extract import extract

    root = make_photos(tmp_path_factory.mktemp("newuser"))
    files = sorted(root.glob("photos/*/*.jpg")) + sorted(root.glob("new-photos/*.jpg"))
    extract(files, "mobilenet_v2", taps=list(TAPS), cache_dir=root / "cache", engine="keras")
    return root
