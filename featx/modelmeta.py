"""``featx.json``: how to feed a ``model.keras`` that featx wrote, read and written in one place.

Why: a Keras file alone does not say which preprocessing its input expects nor what its outputs are
called. ``featx finetune`` and ``featx baseline`` write this description beside the model; ``predict``
and ``serve`` read it back. Both sides use :class:`ModelDescription`, so the schema is written down once:

========== ============================ ===========================================================
key        kinds                        meaning
========== ============================ ===========================================================
kind       both                         ``"finetune"`` (a backbone + head) or ``"baseline"`` (from scratch)
backbone   finetune                     registry name: its own resizing and normalisation feed the model
class_names both                        list of str, in the order of the model's outputs
tap        finetune                     the tap the head reads (informational)
arch       baseline                     ``cnn1`` or ``cnn6``
size       baseline                     input side in pixels (16 to 1024): the centre square resized, raw 0-255
split_id   both                         the stored split the model was trained on
========== ============================ ===========================================================

A file without ``kind`` is read as ``finetune`` (the first release wrote none).  Ranges are checked
on reading (a description is untrusted: :mod:`featx.modelcheck` then checks the model against it):
1 to :data:`MAX_CLASSES` distinct class names, a known backbone or arch, a baseline size within
:data:`BASELINE_SIZES`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from featx.atomic import write_text
from featx.backbones.registry import get_backbone
from featx.errors import FeatxError
from featx.vocabulary import BASELINE_ARCHS

#: The description's file name, beside ``model.keras``.
META_FILE = "featx.json"

#: Model kinds a description may name.
MODEL_KINDS = ("finetune", "baseline")
#: Most class names a description may list.
MAX_CLASSES = 100_000
#: A baseline's input side, pixels: ``featx baseline --size`` takes 16 or more; above 1024 a
#: from-scratch network's first layers alone would take gigabytes.
BASELINE_SIZES = (16, 1024)


@dataclass(frozen=True)
class ModelDescription:
    """What ``featx.json`` says about a ``model.keras`` (see the module docstring for the schema)."""

    kind: str
    class_names: tuple
    split_id: str | None = None
    backbone: str | None = None
    tap: str | None = None
    arch: str | None = None
    size: int | None = None

    def record(self) -> dict:
        """The JSON object, keys in the order featx has always written them."""
        if self.kind == "baseline":
            return {"kind": "baseline", "arch": self.arch, "size": self.size,
                    "class_names": list(self.class_names), "split_id": self.split_id}
        return {"kind": "finetune", "backbone": self.backbone, "class_names": list(self.class_names),
                "tap": self.tap, "split_id": self.split_id}

    def write(self, folder) -> Path:
        """Write ``folder/featx.json`` (returned)."""
        path = Path(folder) / META_FILE
        return write_text(path, json.dumps(self.record(), indent=2))  # whole or absent (featx.atomic)

    @classmethod
    def read(cls, model_path) -> "ModelDescription":
        """The checked description beside ``model_path``.

        Raises
        ------
        FeatxError
            The model or its featx.json is missing, not JSON, or lacks what its kind needs (names the file).
        """
        model_path = Path(model_path)
        meta_path = model_path.with_name(META_FILE)
        if not model_path.is_file() or not meta_path.is_file():
            raise FeatxError(f"{model_path}: expected a model.keras written by featx finetune or baseline, "
                             f"with {META_FILE} beside it")
        try:
            if meta_path.stat().st_size > 64 * MAX_CLASSES:
                raise ValueError(f"{meta_path.stat().st_size:,} bytes is far more than a description needs")
            meta = json.loads(meta_path.read_text())
            kind = meta.get("kind", "finetune")
            names = _class_names(meta["class_names"])
            if kind == "finetune":
                get_backbone(meta["backbone"])
                return cls(kind, names, meta.get("split_id"), backbone=meta["backbone"], tap=meta.get("tap"))
            if kind == "baseline":
                if meta.get("arch") not in BASELINE_ARCHS:
                    raise ValueError(f"arch must be one of {', '.join(BASELINE_ARCHS)}, not {meta.get('arch')!r}")
                return cls(kind, names, meta.get("split_id"), arch=meta["arch"], size=_baseline_size(meta["size"]))
            raise ValueError(f"unknown model kind {kind!r} (expected finetune or baseline)")
        except (ValueError, KeyError, AttributeError, TypeError, FeatxError, OSError) as exc:
            raise FeatxError(f"{meta_path}: not a featx model description ({exc}); it is written beside "
                             "model.keras by featx finetune and baseline") from None


def _class_names(value) -> tuple:
    """``class_names`` as a tuple of distinct str (numbers are read as their text); ValueError otherwise."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_CLASSES:
        raise ValueError(f"class_names must be a list of 1 to {MAX_CLASSES:,} names")
    if not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in value):
        raise ValueError("class_names must be names (strings)")
    names = tuple(str(c) for c in value)
    if len(set(names)) != len(names):
        raise ValueError("class_names has repeated names")
    return names


def _baseline_size(value) -> int:
    """A baseline's ``size``: an int within :data:`BASELINE_SIZES`; ValueError otherwise."""
    low, high = BASELINE_SIZES
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"size must be a whole number of pixels from {low} to {high}, not {value!r}")
    return value


def read_model_meta(model_path) -> dict:
    """The ``featx.json`` beside a ``model.keras`` that featx wrote, checked, as a dict.

    Returns
    -------
    dict
        The file's keys, with ``kind`` ("finetune" or "baseline") always present, ``class_names`` as a list
        of str, and ``size`` an int for a baseline.

    Raises
    ------
    FeatxError
        As :meth:`ModelDescription.read`.
    """
    description = ModelDescription.read(model_path)
    meta = json.loads(Path(model_path).with_name(META_FILE).read_text())
    meta.update(kind=description.kind, class_names=list(description.class_names))
    if description.kind == "baseline":
        meta["size"] = description.size
    return meta
