import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Converting a model for LiteRT costs 15-25 s; tests outside test_inference.py run the Keras engine,
# test_inference.py asks for LiteRT explicitly.
os.environ["FEATX_ENGINE"] = "keras"

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def sample_images():
    """scikit-learn's two sample photos (china.jpg, flower.jpg), shipped with the package."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return {p.stem: p for p in folder.glob("*.jpg")}


def make_photo(seed: int, size=(48, 64)) -> np.ndarray:
    """A smooth random RGB picture (compresses like a photo, unlike noise)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


def write_image(path: Path, rgb: np.ndarray) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[:, :, ::-1].copy())
    return path


@pytest.fixture(autouse=True, scope="session")
def _private_featx_home(tmp_path_factory):
    """Bundle signing keys go to a throw-away folder, not the user's ~/.featx."""
    os.environ["FEATX_HOME"] = str(tmp_path_factory.mktemp("featx-home"))
