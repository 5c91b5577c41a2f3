"""The allowed values of featx's options, named once: the API checks against them and the CLI offers them.

Why one module: the same choice (a storage dtype, a head, a TTA mode) used to be spelt in two or three
places (the checking module, the CLI's ``choices=``, a parser of another module's source) and could drift.
Every tuple here is the complete, ordered set of values; the first is not necessarily the default (each
option's default is declared where the option is). It imports only :mod:`featx.errors`, so every layer may read it.
"""

from __future__ import annotations

import difflib

from featx.errors import FeatxError

#: Storage types of cached codes (the network always computes float32).
DTYPES = ("float32", "float16")

#: Arithmetic of the network: float32, or full-integer int8 (LiteRT only, calibrated on the data; docs/int8.md).
PRECISIONS = ("float32", "int8")

#: How a tap's feature map becomes a code: global average, global max, both concatenated, or the map flattened.
POOLINGS = ("avg", "max", "avgmax", "none")

#: Inference engines a local extraction can use (``auto`` picks LiteRT when it is installed and passes parity).
ENGINES = ("auto", "keras", "litert")

#: Engines ``featx extract`` accepts: the local ones and Ray Data scale-out.
EXTRACT_ENGINES = ENGINES + ("ray",)

#: Heads on cached codes (:mod:`featx.heads`).
HEADS = ("logistic", "linear_svm", "rbf_svm", "knn", "dense")

#: What ``--head`` accepts: a named head, or ``auto`` (cross-validated selection, :mod:`featx.selection`).
HEAD_CHOICES = ("auto",) + HEADS

#: Test-time augmentation: none, the image and its mirror, or its cached augmented views.
TTA_MODES = ("none", "flip", "views")

#: How several backbones' (or taps') codes meet: one head on the concatenation, or the mean of one head each.
FUSE_MODES = ("concat", "mean")

#: The parts of the stored split, in order.
SPLITS = ("train", "val", "test")

#: Training recipes: featx's measured defaults, or the 2017 study's settings exactly.
RECIPES = ("default", "study")

#: ``--class-weight``: inverse-frequency weights, or none.
CLASS_WEIGHTS = ("balanced", "none")

#: Augmentation presets (:mod:`featx.augment`).
AUGMENTATIONS = ("light", "study", "none")

#: The study's from-scratch CNN baselines.
BASELINE_ARCHS = ("cnn1", "cnn6")

#: ``featx advise --score``: LogME evidence, or a cross-validated linear probe.
ADVISE_SCORES = ("logme", "probe")

#: ``featx cache export --format``.
EXPORT_FORMATS = ("npy", "parquet")

#: ``featx cache`` actions.
CACHE_ACTIONS = ("ls", "info", "verify", "compact", "export", "repair")


def did_you_mean(value, allowed) -> str:
    """``" (did you mean 'x'?)"`` for the closest allowed name to a mistyped ``value``, else ``""``.

    Closeness is :func:`difflib.get_close_matches` (ratio >= 0.6) after folding case and ``-``/``_``.
    """
    fold = {str(a).lower().replace("-", "_"): str(a) for a in allowed}
    close = difflib.get_close_matches(str(value).lower().replace("-", "_"), list(fold), n=1)
    return f" (did you mean {fold[close[0]]!r}?)" if close else ""


def check_choice(value, allowed: tuple, param: str):
    """``value`` when it is one of ``allowed``, else a :class:`~featx.errors.FeatxError` naming ``param``.

    The error says what was expected and what was given (``expected one of a, b, got 'c'``), and the
    closest allowed value (:func:`did_you_mean`).
    """
    if value not in allowed:
        raise FeatxError(f"expected one of {', '.join(allowed)}, got {value!r}{did_you_mean(value, allowed)}",
                         param=param)
    return value


def one_value(value, cls, keywords: dict, param: str = "options"):
    """An options value: ``value`` when given (an instance of ``cls``), else ``cls(**keywords)``; never both.

    Why: a function that takes its options as one value *or* as keywords must not quietly drop one of
    the two when a caller gives both.

    Raises
    ------
    TypeError
        Both ``value`` and keywords given (as Python does for an argument given twice), or an unknown keyword.
    FeatxError
        ``value`` is not a ``cls`` (names ``param``).
    """
    if value is None:
        return cls(**keywords)
    if keywords:
        raise TypeError(f"give {param}= or its fields as keywords ({', '.join(sorted(keywords))}), not both")
    if not isinstance(value, cls):
        raise FeatxError(f"expected a {cls.__name__}, got {type(value).__name__}", param=param)
    return value
