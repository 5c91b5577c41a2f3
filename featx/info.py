"""What featx runs on here: versions, the Keras backend, the devices it sees, engines, where files live.

The first thing a bug report needs (``featx info``).  Everything but the device list is read without
importing a backend (package metadata, environment variables, the file system); the device list imports
the active backend once, the only way to know what it sees (``devices=False`` skips it).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from featx import BACKEND_FROM_ENVIRONMENT, __version__, _tf
from featx.cache import default_cache_dir, list_caches
from featx.engines import litert_available, uses_litert
from featx.preprocess import available_cores

#: distributions whose versions a bug report needs, in the order shown
PACKAGES = ("keras", "tensorflow", "jax", "jaxlib", "torch", "ai-edge-litert", "numpy", "h5py", "scikit-learn",
            "opencv-python-headless", "ray")


def _engines(backend: str, gpu: bool) -> dict:
    """Each engine: whether it can run here, and what ``auto`` picks."""
    litert = litert_available()
    converts = backend == "tensorflow" and _tf.package_version("tensorflow") is not None
    return {
        "keras": f"yes, on {backend}",
        "litert": ("yes, converts on first use" if converts else "runs models converted earlier; converting needs "
                   "KERAS_BACKEND=tensorflow") if litert else "not installed (pip install 'featx[litert]')",
        "ray": "yes" if _tf.package_version("ray") else "not installed (pip install 'featx[ray]')",
        "auto": "litert" if litert and uses_litert("auto", gpu) and converts else "keras",
    }


def describe(cache_dir=None, devices: bool = True) -> dict:
    """featx's view of this machine, as one JSON-ready dict.

    Parameters
    ----------
    cache_dir : str or Path, optional
        The cache folder to describe (default ``$FEATX_CACHE`` or ``./cache``).
    devices : bool
        Ask the active Keras backend which devices it sees (imports it: seconds).  False reads only
        metadata and the file system.

    Returns
    -------
    dict
        ``featx``, ``python``, ``platform``; ``packages`` (distribution -> version or None);
        ``backend`` (``name``, ``chosen_by``: ``KERAS_BACKEND`` or the featx default);
        ``devices`` (``"KIND:i description"`` strings, None when not asked); ``gpu``; ``cores`` (CPU cores
        this process may use); ``engines``; ``cache`` (``folder``, ``exists``, ``configurations``,
        ``converted_models`` folder and ``converted`` count); ``home`` (bundle signing keys).

    Raises
    ------
    FeatxError
        ``KERAS_BACKEND`` names an unknown or missing backend and ``devices`` is True.
    """
    backend = _tf.backend()
    seen = _tf.devices() if devices else None
    gpu = any(d.startswith("GPU:") for d in seen) if seen is not None else _tf.gpu_sign()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    engines_folder = cache / "engines"
    return {
        "featx": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _tf.package_version(name) for name in PACKAGES},
        "backend": {"name": backend, "chosen_by": "KERAS_BACKEND" if BACKEND_FROM_ENVIRONMENT else "featx's default"},
        "devices": seen,
        "gpu": gpu,
        "cores": available_cores(),
        "engines": _engines(backend, gpu),
        "cache": {"folder": str(cache.resolve()), "exists": cache.is_dir(),
                  "configurations": len(list_caches(cache)) if cache.is_dir() else 0,
                  "converted_models": str(engines_folder.resolve()),
                  "converted": len(list(engines_folder.glob("*.tflite"))) if engines_folder.is_dir() else 0},
        "home": str(Path(os.environ.get("FEATX_HOME", Path.home() / ".featx"))),
    }


def format_info(info: dict) -> str:
    """:func:`describe`'s dict as the aligned text ``featx info`` prints."""
    rows = [("featx", info["featx"]), ("python", f"{info['python']} ({info['platform']})"),
            ("backend", f"{info['backend']['name']} ({info['backend']['chosen_by']})")]
    rows.append(("packages", ""))
    rows += [(f"  {name}", version) for name, version in info["packages"].items() if version]
    missing = [name for name, version in info["packages"].items() if not version]
    if missing:
        rows.append(("  not installed", ", ".join(missing)))
    devices = info["devices"]
    rows.append(("devices", "not asked (--no-devices)" if devices is None else ", ".join(devices) or "none"))
    rows.append(("GPU", "yes" if info["gpu"] else "no"))
    rows.append(("CPU cores", str(info["cores"])))
    rows += [(f"engine {name}", text) for name, text in info["engines"].items()]
    cache = info["cache"]
    n, converted = cache["configurations"], cache["converted"]
    rows.append(("cache", f"{cache['folder']} ({n} configuration{'' if n == 1 else 's'})" if cache["exists"]
                 else f"{cache['folder']} (not created yet)"))
    rows.append(("converted models", f"{cache['converted_models']} ({converted} file{'' if converted == 1 else 's'})"))
    rows.append(("signing keys", info["home"]))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}".rstrip() for name, value in rows)
