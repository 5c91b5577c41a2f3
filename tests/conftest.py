"""Shared test helpers and the suite's policies.

Policies (the README's "Tests" section says the same):

- **Timeout.** Every test has ``[tool.pytest.ini_options] timeout`` (300 s) to finish; a test that needs longer
  says so with ``@pytest.mark.timeout(N)``.  A hung server, Ray run or browser fails the test, never the CI job.
- **slow.** ``@pytest.mark.slow`` marks a test that takes more than about 10 s on two CPU cores (a large network
  built, a subprocess that imports TensorFlow, a Ray cluster, a browser, fine-tuning).  ``-m "not slow"`` is the
  quick local loop; CI runs everything.
- **Optional extras.** A test that needs an extra (ai-edge-litert, starlette/uvicorn/httpx, ray, playwright)
  asks for it with :func:`require_extra`: on a developer machine without it the test is skipped with the reason
  and the pip command; in CI (``CI=true``, where every extra is installed) a missing or broken import FAILS,
  so a broken install cannot silently skip the tests of the default engine.
- **Engines.** The default engine on a CPU is LiteRT, whose conversion costs 15-25 s per model; tests run Keras
  unless they ask for LiteRT, and those that do share one converted-engine store per run (:func:`shared_engines`).
"""

import importlib
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Converting a model for LiteRT costs 15-25 s; tests run the Keras engine unless they ask for LiteRT
# (test_inference.py, and the resilience tests parametrized over both engines with the `engine` fixture).
os.environ["FEATX_ENGINE"] = "keras"

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

#: module -> the extra (or package) that provides it, for the skip message
EXTRAS = {
    "ai_edge_litert": "pip install 'featx[litert]'",
    "starlette": "pip install 'featx[serve]'",
    "uvicorn": "pip install 'featx[serve]'",
    "multipart": "pip install 'featx[serve]'",
    "httpx": "pip install httpx (dev extra)",
    "ray": "pip install 'featx[ray]'",
    "playwright.sync_api": "pip install playwright (dev extra)",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_extra(module: str, why: str = ""):
    """Import ``module`` or skip the calling test/module with the reason; in CI, fail instead.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"ai_edge_litert"``.
    why : str
        What the test needs it for (goes into the skip/failure message).

    Returns
    -------
    module
        The imported module.
    """
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken install raises more than ImportError
        how = EXTRAS.get(module, f"pip install {module.split('.')[0]}")
        message = f"{module} cannot be imported ({type(exc).__name__}: {exc}){': ' + why if why else ''}; {how}"
        if in_ci():
            pytest.fail(f"CI installs every extra, but {message}", pytrace=False)
        pytest.skip(message, allow_module_level=True)


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


def tinted(seed, tint, size=(40, 52)) -> np.ndarray:
    """Photo-like images whose colour cast (channel ``tint``: 0 red, 1 green, 2 blue) carries the class."""
    img = make_photo(seed, size).astype(np.int16) // 2
    img[:, :, tint] += 120
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image(path: Path, rgb: np.ndarray) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[:, :, ::-1].copy())
    return path


@pytest.fixture(autouse=True, scope="session")
def _private_featx_home(tmp_path_factory):
    """Bundle signing keys go to a throw-away folder, not the user's ~/.featx."""
    os.environ["FEATX_HOME"] = str(tmp_path_factory.mktemp("featx-home"))


@pytest.fixture(scope="session")
def engines_store(tmp_path_factory):
    """One converted-engine store for the whole run (LiteRT conversions happen once per model and taps)."""
    return tmp_path_factory.mktemp("engines-store")


def _converted_path_modules():
    """The featx modules whose make_engine looks up ``converted_path`` (the engines package or the old module)."""
    found = []
    for name in ("featx.engines.litert", "featx.inference"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "converted_path"):
            found.append(module)
    return found


def redirect_engines(store, patch=setattr):
    """Make every LiteRT conversion in this process use ``store``, whatever cache folder it is given.

    ``patch(module, name, value)`` does the replacing (``monkeypatch.setattr`` in a test).  Also usable in
    a test's subprocess: put the tests folder on ``sys.path`` and call it before extracting.
    """
    for module in _converted_path_modules():
        original = module.converted_path

        def redirected(cache_dir, *args, _original=original, **kwargs):
            return _original(store, *args, **kwargs)

        patch(module, "converted_path", redirected)


@pytest.fixture
def shared_engines(engines_store, monkeypatch):
    """Point every LiteRT conversion of this test at the run's shared store, whatever cache folder it uses."""
    redirect_engines(engines_store, monkeypatch.setattr)
    return engines_store


@pytest.fixture(params=["keras", "litert"])
def engine(request, monkeypatch):
    """Run a test with Keras and with the default CPU engine (LiteRT), the latter from the shared store."""
    if request.param == "litert":
        require_extra("ai_edge_litert", "the default engine on a CPU")
        request.getfixturevalue("shared_engines")
    monkeypatch.setenv("FEATX_ENGINE", request.param)
    return request.param


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(server):
    """Run a ``uvicorn.Server`` in a daemon thread until its ``/health`` answers; returns (thread, url)."""
    import threading
    import time

    import httpx

    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://{server.config.host}:{server.config.port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    return thread, url
