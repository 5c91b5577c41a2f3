"""Compatibility shim: the engines moved to :mod:`featx.engines` (issue 13).

``featx.engines.keras``, ``featx.engines.litert`` and ``featx.engines.ray`` hold them now, behind
one interface (``run(uint8 batch) -> {tap: codes}``) and one :class:`~featx.config.ExtractorConfig`.
This module re-exports the public names and keeps the former :func:`make_engine` call shape for
code not yet moved; new code imports from :mod:`featx.engines`.
"""

from __future__ import annotations

from types import SimpleNamespace

from featx.engines import ENGINES, PARITY_ATOL, KerasEngine, LiteRTEngine, litert_available
from featx.engines import make_engine as _make_engine_for_config
from featx.engines.litert import converted_path, convert, max_difference, probe_batch

__all__ = ["ENGINES", "PARITY_ATOL", "KerasEngine", "LiteRTEngine", "convert", "converted_path",
           "litert_available", "make_engine", "max_difference", "probe_batch"]


def make_engine(spec, taps, build_model, config: dict, batch_size: int, engine: str = "auto", cache_dir=None,
                gpu: bool | None = None, warn=None):
    """The former signature: ``spec``, ``taps``, a model builder and the cache-key dict, for callers
    not yet moved to ``featx.engines.make_engine(ExtractorConfig, ...)``.  Batches are uint8 images."""
    key = dict(config)
    adapter = SimpleNamespace(spec=spec, taps=tuple(taps), backbone=key.get("backbone", getattr(spec, "name", "")),
                              mixed_precision=bool(key.get("mixed_precision", False)),
                              cache_key=lambda: key, feature_model=build_model)
    return _make_engine_for_config(adapter, batch_size, engine, cache_dir, gpu=gpu, warn=warn)
