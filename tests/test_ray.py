import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from conftest import ROOT
from featx.cache import FeatureCache
from featx.engines.ray import RayEngine
from featx.extract import extract, load_features
from test_extract import make_dataset

pytest.importorskip("ray", reason="the Ray engine needs its extra: pip install 'featx[ray]'")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("raydata") / "data", per_class=4, seed=300)
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


@pytest.fixture(scope="module")
def local(data, tmp_path_factory):
    cache = tmp_path_factory.mktemp("local")
    report = extract(data, cache_dir=cache, taps=["pre_logits", "stage3"], batch_size=4)
    return report, load_features(data, cache_dir=cache, taps=["pre_logits", "stage3"], extract_missing=False)


def test_ray_gives_the_local_engines_rows_and_failures(data, local, tmp_path):
    local_report, local_feats = local
    report = extract(data, cache_dir=tmp_path, taps=["pre_logits", "stage3"], batch_size=4,
                     engine=RayEngine(num_workers=1))
    assert report.cache_file.name == local_report.cache_file.name
    assert report.computed == local_report.computed == 8
    assert sorted(p.name for p, _ in report.failures) == sorted(p.name for p, _ in local_report.failures)
    assert sorted(r for _, r in report.failures) == sorted(r for _, r in local_report.failures)
    assert FeatureCache(report.cache_file).info()["provenance"]["engine"] == "ray"
    feats = load_features(data, cache_dir=tmp_path, taps=["pre_logits", "stage3"], extract_missing=False)
    assert feats.keys == local_feats.keys
    for tap in ("pre_logits", "stage3"):
        np.testing.assert_allclose(feats.codes[tap], local_feats.codes[tap], atol=1e-4)
    assert FeatureCache(report.cache_file).verify() == []


def test_a_killed_worker_is_retried_and_the_result_is_complete(data, local, tmp_path):
    marker = tmp_path / "crashed-once"
    report = extract(data, cache_dir=tmp_path / "c", batch_size=4, engine=RayEngine(crash_marker=str(marker)))
    assert marker.exists()  # a worker did die mid-run
    assert report.computed == 8 and len(report.failures) == 2
    feats = load_features(data, cache_dir=tmp_path / "c", extract_missing=False)
    np.testing.assert_allclose(feats.codes["pre_logits"], local[1].codes["pre_logits"], atol=1e-4)


DRIVER = textwrap.dedent("""
    import sys
    import featx.engines.ray
    from featx.extract import extract
    featx.engines.ray.SEGMENT_ROWS = 2  # a segment per batch of 2: several shards to interrupt
    extract(sys.argv[1], cache_dir=sys.argv[2], batch_size=2, engine="ray")
""")


def settle(cache_dir, quiet=3.0, limit=60.0):
    """Wait until no new segment has appeared in ``incoming/`` for ``quiet`` seconds."""
    last, since, end = None, time.time(), time.time() + limit
    while time.time() < end:
        now = sorted(p.name for p in cache_dir.glob("*/incoming/inc-*.h5"))
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= quiet:
            return
        time.sleep(0.2)


def test_an_interrupted_run_resumes_without_recomputing_finished_shards(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=20, seed=400)
    cache_dir = tmp_path / "c"
    env = {**os.environ, "FEATX_ENGINE": "keras"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(data), str(cache_dir)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if len(list(cache_dir.glob("*/incoming/inc-*.h5"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()
    settle(cache_dir)  # a worker still busy when the driver died may finish its segment
    cache = FeatureCache(next(cache_dir.glob("*/incoming")).parent)
    done = cache.keys("pre_logits")
    assert 0 < len(done) < 40
    report = extract(data, cache_dir=cache_dir, batch_size=2, engine="ray")
    assert report.cached == len(done) and report.computed == 40 - len(done)
    assert FeatureCache(report.cache_file).verify() == []


def test_views_with_ray_are_refused_before_any_work(data, tmp_path):
    from featx.errors import FeatxError

    with pytest.raises(FeatxError, match="--views: augmented views run on the local engine"):
        extract(data, cache_dir=tmp_path, engine="ray", views=2)
    assert not list(tmp_path.iterdir())
