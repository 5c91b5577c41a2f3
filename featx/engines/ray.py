"""Scale-out extraction on Ray Data: the same cache rows, computed by a pool of actors.

The driver hashes the files and works out what the cache lacks, exactly as the local engine
does.  Ray Data then streams those images through CPU decode tasks (the local loader and the
backbone's own resize) into ``map_batches`` over an actor pool in which each actor builds the
feature model once (LiteRT or Keras, as locally).  Each actor writes every batch it computes as
one whole segment (``SEGMENT_ROWS`` images, in network batches of ``batch_size``) into the cache
folder's ``incoming/`` (temporary name, fsync, rename) and sends
back only keys and errors, never codes.  The driver's one job at the end is the commit: it adopts
those segments into the manifest by renaming them, without copying a row.  A segment is the shard
and the unit of resumption: a killed worker loses at most the batch it was computing (Ray
restarts it and retries the batch); a killed driver leaves whole segments in ``incoming/``, which
the next run's first commit adopts, so the rerun computes only what is missing.  The rows are
the local engine's (same loader, same engine, same dtype), so nothing downstream can tell which
engine computed a row.

Images and the cache folder must be on storage every node can read and write (the workers write
the segments).  ``address=None`` starts a local Ray with this machine's CPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featx.errors import FeatxError


SEGMENT_ROWS = 256  # images per segment a worker writes: the unit of loss and of resumption


def _decode_batch(batch: dict, backbone: str) -> dict:
    """CPU stage: files -> resized uint8 images (errors travel as text, never raise)."""
    from featx.backbones.registry import get_backbone
    from featx.preprocess import load_for_network

    spec = get_backbone(backbone)
    size = spec.input_size
    images = np.zeros((len(batch["key"]), size, size, 3), np.uint8)
    errors = []
    for i, path in enumerate(batch["path"]):
        try:
            key = batch["key"][i]
            key = key.decode() if isinstance(key, bytes) else str(key)  # the bytes decoded must be this content
            images[i] = load_for_network(spec, Path(str(path)), expected_key=key)
            errors.append("")
        except Exception as exc:  # noqa: BLE001 - reported per image, like the local engine
            errors.append(str(exc).removeprefix(f"{path}: ") or type(exc).__name__)
    return {"key": batch["key"], "path": batch["path"], "image": images, "error": np.asarray(errors)}


class _Embedder:
    """One per actor: builds the backbone once, then embeds batch after batch."""

    def __init__(self, backbone, taps, pooling, weights, batch_size, engine, cache_dir, cache_folder, cache_config,
                 crash_marker=None):
        from featx.config import ExtractorConfig
        from featx.engines import make_engine

        config = ExtractorConfig(backbone, taps, pooling, "float32", weights)
        self.spec = config.spec
        self.taps = list(config.taps)
        self.batch_size = batch_size
        self.crash_marker = crash_marker
        self.cache_folder, self.cache_config = cache_folder, cache_config
        self.runner = make_engine(config, batch_size, engine, cache_dir)

    def __call__(self, batch: dict) -> dict:
        if self.crash_marker and not Path(self.crash_marker).exists():
            Path(self.crash_marker).touch()  # tests: die once, as a lost worker would
            import os

            os._exit(1)
        ok = batch["error"] == ""
        images = batch["image"]
        out = {t: [] for t in self.taps}
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            padded = np.zeros((self.batch_size, *chunk.shape[1:]), np.uint8)
            padded[: len(chunk)] = chunk
            codes = self.runner.run(padded)
            for t in self.taps:
                out[t].append(np.asarray(codes[t][: len(chunk)], np.float32))
        if ok.any():  # the batch's rows: one whole segment, written here, adopted by the driver's commit
            from featx.cache import FeatureCache, TapRows

            dtype = self.cache_config["dtype"]
            FeatureCache(self.cache_folder, self.cache_config).add_segment(
                {t: TapRows(np.asarray(batch["key"][ok], dtype="S32"), np.concatenate(out[t])[ok].astype(dtype))
                 for t in self.taps})
        return {"key": batch["key"], "path": batch["path"], "error": batch["error"], "ok": ok}


@dataclass
class RayEngine:
    """Ray's options, carried by the engine object that :func:`featx.extract.extract` accepts.

    Parameters
    ----------
    address : str, optional
        A Ray cluster (default: start one on this machine with its CPUs).
    num_workers : int
        Backbone actors (>= 1).
    gpus_per_worker : float
        GPUs per actor (0: CPU actors).
    engine : {"auto", "keras", "litert"}
        The local engine inside each actor (default ``$FEATX_ENGINE`` or auto).
    crash_marker : str, optional
        Tests only: the first actor exits once, as a lost worker would.
    """

    address: str | None = None
    num_workers: int = 1
    gpus_per_worker: float = 0
    engine: str = "auto"
    crash_marker: str | None = None
    name = "ray"

    def extract(self, config, cache, todo: list, batch_size: int) -> list:
        """Compute ``todo`` [(key, path)] for ``config`` into ``cache``; returns failures [(path, reason)]."""
        return extract_ray(config, cache, todo, batch_size, self.address, self.num_workers, self.gpus_per_worker,
                           self.engine, self.crash_marker)


def extract_ray(config, cache, todo: list, batch_size: int, address=None, num_workers: int = 1,
                gpus_per_worker: float = 0, engine: str = "auto", crash_marker=None):
    """Compute ``todo`` [(key, path)] on Ray; returns failures [(path, reason)]."""
    try:
        import ray
    except ImportError:
        raise FeatxError("--engine ray needs its extra: pip install 'featx[ray]'") from None
    if num_workers < 1:
        raise FeatxError(f"--num-workers: expected 1 or more, got {num_workers}")
    import logging
    import os

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    inner = engine if engine != "auto" else os.environ.get("FEATX_ENGINE", "auto")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 logging_level="ERROR")
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        items = [{"key": k, "path": str(p)} for k, p in todo]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // batch_size))
        ds = ds.map_batches(_decode_batch, batch_size=batch_size, batch_format="numpy",
                            fn_kwargs={"backbone": config.backbone})
        ds = ds.map_batches(  # an actor batch is one segment: SEGMENT_ROWS images, in network batches
            _Embedder, batch_size=max(batch_size, SEGMENT_ROWS), batch_format="numpy", concurrency=num_workers,
            num_gpus=gpus_per_worker or None,
            fn_constructor_kwargs=dict(backbone=config.backbone, taps=list(config.taps), pooling=config.pooling,
                                       weights=config.weights,
                                       batch_size=batch_size, engine=inner, cache_dir=str(cache.path.parent),
                                       cache_folder=str(cache.path), cache_config=cache.config,
                                       crash_marker=crash_marker),
        )  # a lost actor is restarted and its batch retried: Ray Data's default for actor pools (featx used to
        # pass max_restarts/max_task_retries through ray_remote_args, which Ray deprecates and drops in 2.64)
        failures = []
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):  # keys and errors only
            ok = batch["ok"].astype(bool)
            for path, err in zip(batch["path"][~ok], batch["error"][~ok]):
                failures.append((Path(str(path)), str(err)))
        return failures
    finally:
        if started_here:
            ray.shutdown()
