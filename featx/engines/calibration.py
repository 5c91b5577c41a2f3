"""Which real images calibrate an int8 model: one documented, deterministic rule, and its identity.

Full-integer quantization needs the range of every activation, measured by running the float32
network over a few representative images (TensorFlow's *representative dataset*).  Which images
decides the int8 model, so featx chooses them by a rule that depends on the data alone:

1. the images of the dataset's ``train`` folder when it has split folders, else all its images;
2. their content keys (the cache's key: a hash of the file's bytes), each distinct key once;
3. the ``CALIBRATION_IMAGES`` (100) smallest keys, in ascending order, calibrate; the next
   ``PROBE_SIZE`` (4) are the parity probe (held out from calibration), or, in a dataset with
   fewer images, the last 4 of the calibration images.

Content keys are uniform hashes, so the smallest 100 are a random sample of the set that does not
depend on file names, folder order or the machine; the same files always give the same images, the
same int8 model (the converter is deterministic in its input) and the same identity
(:attr:`Calibration.id`, a hash of the rule and the keys), which is part of the int8 cache key.
The choice is stored in ``<cache>/engines/calibration-<id>.json`` so that a later run that is given
only the identity (a bundle's prediction) can convert again while the files are still there.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featx.errors import FeatxError
from featx.preprocess import load_for_network

CALIBRATION_IMAGES = 100  # the measurement: 100 of the set's own photos, min cosine 0.927+
PROBE_SIZE = 4
RULE = "train-else-all/smallest-content-keys/v1"


@dataclass(frozen=True)
class Calibration:
    """The calibration images and the int8 parity probe, by content key and the path each was read at."""

    keys: tuple
    paths: tuple
    probe_keys: tuple
    probe_paths: tuple

    @property
    def id(self) -> str:
        """16 hex digits: sha256 of the rule and the calibration keys (the probe does not change the model)."""
        return hashlib.sha256(json.dumps([RULE, list(self.keys)]).encode()).hexdigest()[:16]

    def images(self, spec) -> np.ndarray:
        """The calibration images as the network sees them, ``(N, S, S, 3)`` uint8, in key order."""
        return _load(spec, self.paths, self.keys)

    def probe(self, spec) -> np.ndarray:
        """The parity probe, ``(PROBE_SIZE, S, S, 3)`` uint8 (fewer when the data has fewer images)."""
        return _load(spec, self.probe_paths, self.probe_keys)

    def save(self, folder) -> Path:
        """Write ``calibration-<id>.json`` into ``folder`` (``<cache>/engines``) unless it is there."""
        path = Path(folder) / f"calibration-{self.id}.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"rule": RULE, "id": self.id, "keys": list(self.keys),
                                       "paths": [str(p) for p in self.paths], "probe_keys": list(self.probe_keys),
                                       "probe_paths": [str(p) for p in self.probe_paths]}, indent=1))
            os.replace(tmp, path)
        return path


def choose(paths, keys, splits=None, size: int = CALIBRATION_IMAGES) -> Calibration:
    """The calibration of a dataset by the module's rule.

    Parameters
    ----------
    paths : sequence of Path
        The dataset's images.
    keys : sequence of str or None
        Their content keys (None: unreadable, left out).
    splits : sequence of str, optional
        Each image's split folder ("train", "val", "test"); given, only "train" images calibrate.
    size : int
        How many images calibrate (default ``CALIBRATION_IMAGES``).

    Raises
    ------
    FeatxError
        No readable image to calibrate on.
    """
    first = {}
    for i, (p, k) in enumerate(zip(paths, keys)):
        if k is not None and (splits is None or splits[i] == "train") and k not in first:
            first[k] = p
    if not first:
        raise FeatxError("int8: no readable training image to calibrate on", param="precision")
    ordered = sorted(first)
    calib = ordered[:size]
    probe = ordered[size : size + PROBE_SIZE] or calib[-PROBE_SIZE:]
    return Calibration(tuple(calib), tuple(first[k] for k in calib), tuple(probe), tuple(first[k] for k in probe))


def load(folder, calibration_id: str) -> Calibration | None:
    """The calibration stored as ``calibration-<id>.json`` in ``folder``, or None when there is none."""
    path = Path(folder) / f"calibration-{calibration_id}.json"
    try:
        record = json.loads(path.read_text())
        found = Calibration(tuple(record["keys"]), tuple(Path(p) for p in record["paths"]),
                            tuple(record["probe_keys"]), tuple(Path(p) for p in record["probe_paths"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if found.id == calibration_id else None


def _load(spec, paths, keys) -> np.ndarray:
    """Decode these files through :func:`featx.preprocess.load_for_network`, checking each is the file it was."""
    from featx.images import ImageError

    try:
        return np.stack([load_for_network(spec, p, expected_key=k) for p, k in zip(paths, keys)])
    except ImageError as exc:
        raise FeatxError(f"int8 calibration: {exc}; the calibration images must stay as they were until the "
                         "int8 model is converted", param="precision") from None
