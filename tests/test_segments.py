"""The segmented cache: O(new rows) commits, compaction, legacy migration, crash safety, export."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import ROOT
from featx.cache import commit as cache_commit, files as cache_files, layout as cache_layout
from featx.cache import merge as cache_merge, segments as cache_segments
from featx.cache import FeatureCache, TapRows, cache_path, export
from featx.errors import FeatxError

CONFIG = {"backbone": "toy", "pooling": "avg", "dtype": "float32"}
DIM = 6


@pytest.fixture(autouse=True)
def no_grace(monkeypatch):
    """Segments the manifest stopped naming are deleted by the next writer at once here (no grace
    period); the tests of the grace period set their own."""
    monkeypatch.setenv("FEATX_CACHE_GRACE", "0")


def keys_for(start, n):
    return [f"{i:032x}" for i in range(start, start + n)]


def codes_for(keys, dim=DIM):
    """Codes that are a function of the key: any wrong or shifted row shows."""
    base = np.array([int(k, 16) % 100_003 for k in keys], np.float32)
    return base[:, None] + np.arange(dim, dtype=np.float32)[None, :] / 8


def rows(keys, dim=DIM):
    return TapRows(np.asarray(keys, dtype="S32"), codes_for(keys, dim))


def new_cache(tmp_path, config=CONFIG):
    return FeatureCache(cache_path(tmp_path, config), config)


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_a_commit_writes_one_segment_with_only_the_new_rows(tmp_path):
    cache = new_cache(tmp_path)
    with cache:
        cache.append({"a": rows(keys_for(0, 100)), "b": rows(keys_for(0, 40), 3)})
        cache.commit()
        first = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.segments_dir.iterdir()}
        cache.append({"a": rows(keys_for(90, 20))})  # 10 already cached, 10 new
        cache.append({"a": rows(keys_for(105, 5))})  # repeats within the journal
        cache.commit(provenance={"engine": "test"})
    m = cache.manifest()
    assert [s["taps"]["a"]["rows"] for s in m["segments"]] == [100, 10]
    for p in cache.segments_dir.iterdir():  # the first segment was not rewritten
        if p.name in first:
            assert (p.stat().st_ino, p.stat().st_mtime_ns) == first[p.name]
    assert cache.info()["taps"]["a"]["rows"] == 110 and cache.info()["provenance"]["engine"] == "test"
    asked = keys_for(105, 5) + keys_for(3, 2) + keys_for(3, 1)  # across segments, with a repeat
    np.testing.assert_array_equal(cache.read("a", asked), codes_for(asked))
    np.testing.assert_array_equal(cache.read("b", keys_for(39, 1)), codes_for(keys_for(39, 1), 3))
    assert cache.keys("a") == set(keys_for(0, 110))
    assert cache.keys("a", among=keys_for(108, 5)) == set(keys_for(108, 2))
    with pytest.raises(FeatxError, match="no b codes for image"):
        cache.read("b", keys_for(50, 1))
    assert cache.verify() == []
    assert not list(cache.journal.glob("*"))


def test_journalled_and_incoming_rows_are_read_before_commit(tmp_path):
    cache = new_cache(tmp_path)
    with cache:
        cache.append({"a": rows(keys_for(0, 10))})
        cache.commit()
        cache.append({"a": rows(keys_for(10, 10))})
    cache.add_segment({"a": rows(keys_for(15, 10))})  # a Ray worker's segment, overlapping the journal
    assert cache.keys("a") == set(keys_for(0, 25))
    np.testing.assert_array_equal(cache.read("a", keys_for(0, 25)), codes_for(keys_for(0, 25)))
    cache.commit()
    assert cache.info()["taps"]["a"]["rows"] == 25 and cache.verify() == []
    assert not list(cache.incoming_dir.glob("*"))


def test_compaction_streams_and_keeps_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_layout, "COPY_BYTES", 7 * DIM * 4)  # blocks of 7 rows
    monkeypatch.setattr(cache_merge, "_MERGE_KEY_BYTES", 1)  # the k-way merge in blocks of 256 keys
    cache = new_cache(tmp_path)
    rng = np.random.default_rng(0)
    order = [f"{x:032x}" for x in rng.permutation(3000) * 7919]  # keys in no particular order
    with cache:
        for start in range(0, 3000, 500):
            cache.append({"a": rows(order[start : start + 500]), "b": rows(order[start : start + 100], 2)})
            cache.commit()
    assert cache.info()["segments"] == 6
    assert main_ok(["cache", "compact", str(cache.path)])
    info = cache.info()
    assert info["segments"] == 1 and info["taps"]["a"]["rows"] == 3000 and info["taps"]["b"]["rows"] == 600
    assert len(list(cache.segments_dir.glob("seg-*.h5"))) == 1  # old segments deleted: no reader held them
    assert cache.verify() == []
    seg = next(cache.segments_dir.glob("seg-*.h5"))
    with h5py.File(seg) as f:
        sk = f["taps/a/sorted_keys"][:]
        assert (sk[1:] > sk[:-1]).all() and np.array_equal(f["taps/a/keys"][:][f["taps/a/sorted_rows"][:]], sk)
    asked = list(rng.choice(order, 200))
    np.testing.assert_array_equal(cache.read("a", asked), codes_for(asked))
    with h5py.File(cache.path / "view.h5") as f:  # plain h5py: one keys and one codes dataset per tap
        assert f["taps/a/codes"].shape == (3000, DIM) and f["taps/b/keys"].shape == (600,)
        np.testing.assert_array_equal(f["taps/a/codes"][:], codes_for(f["taps/a/keys"][:].astype("U32").tolist()))


def main_ok(argv):
    from featx.cli import main

    return main(argv) == 0


def write_legacy(path, taps, config=CONFIG, failures=()):
    """A format-1 cache exactly as featx wrote it before segments (one file, chunked datasets)."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = 1
        f.attrs["config"] = json.dumps(config, sort_keys=True)
        f.attrs["provenance"] = json.dumps({"engine": "keras", "created": "2026-01-01T00:00:00"})
        f.create_dataset("failures", data=json.dumps(list(failures)))
        for tap, (keys, codes) in taps.items():
            g = f.create_group(f"taps/{tap}")
            g.create_dataset("keys", data=np.asarray(keys, "S32"), maxshape=(None,), chunks=(4096,))
            g.create_dataset("codes", data=codes, maxshape=(None, codes.shape[1]), chunks=(64, codes.shape[1]))


def test_a_legacy_single_file_is_read_then_migrated_with_identical_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_layout, "COPY_BYTES", 50 * DIM * 4)
    folder = cache_path(tmp_path, CONFIG)
    legacy = folder.with_name(folder.name + ".h5")
    keys = keys_for(1000, 300)[::-1]
    write_legacy(legacy, {"a": (keys, codes_for(keys)), "b": (keys[:7], codes_for(keys[:7], 2))},
                 failures=[["x.jpg", "not an image"]])
    legacy_journal = legacy.with_name(legacy.name + ".journal")
    legacy_journal.mkdir()
    np.savez(legacy_journal / "part-1.npz", keys__a=np.asarray(keys_for(5000, 3), "S32"),
             codes__a=codes_for(keys_for(5000, 3)))
    for c in (FeatureCache(folder), FeatureCache(legacy)):  # before migration, by either name
        before = c.read("a", keys)
        np.testing.assert_array_equal(before, codes_for(keys))
        assert c.info()["taps"]["a"]["rows"] == 300 and c.info()["format"] == 1
        assert c.verify() == []
    cache = FeatureCache(folder, CONFIG)
    with cache:
        cache.append({"a": rows(keys_for(9000, 2))})
        cache.commit()
    assert not legacy.exists() and not legacy_journal.exists()
    info = cache.info()
    assert info["format"] == 2 and info["taps"]["a"]["rows"] == 305 and info["failures"] == [["x.jpg", "not an image"]]
    assert info["provenance"]["engine"] == "keras"
    everything = keys + keys_for(5000, 3) + keys_for(9000, 2)
    np.testing.assert_array_equal(cache.read("a", everything), codes_for(everything))
    np.testing.assert_array_equal(cache.read("b", keys[:7]), codes_for(keys[:7], 2))
    assert cache.verify() == []


def test_no_temporary_file_is_left_when_the_disk_fills(tmp_path, monkeypatch):
    cache = new_cache(tmp_path)
    with cache:
        cache.append({"a": rows(keys_for(0, 50))})
        cache.commit()
        cache.append({"a": rows(keys_for(50, 50))})
        cache.commit()
    before = files_under(cache.path)

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_files.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        cache.append({"a": rows(keys_for(100, 5))})
    with pytest.raises(OSError, match="No space left"):
        cache.add_segment({"a": rows(keys_for(100, 5))})
    assert files_under(cache.path) == before
    monkeypatch.undo()
    part = cache.append({"a": rows(keys_for(100, 5))})
    monkeypatch.setattr(cache_files.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        cache.commit()
    assert files_under(cache.path) == sorted(before + [str(part.relative_to(cache.path))])  # the part waits
    monkeypatch.undo()
    cache.commit()
    before = files_under(cache.path)
    monkeypatch.setattr(cache_files.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        cache.compact()
    assert files_under(cache.path) == before
    monkeypatch.undo()
    np.testing.assert_array_equal(cache.read("a", keys_for(0, 105)), codes_for(keys_for(0, 105)))
    cache.compact()
    assert cache.info()["segments"] == 1 and cache.info()["taps"]["a"]["rows"] == 105 and cache.verify() == []


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from test_segments import CONFIG, rows, keys_for
    from featx.cache import FeatureCache
    cache = FeatureCache(sys.argv[1], CONFIG)
    mode, batch = sys.argv[2], 3000
    with cache:
        for i in range(int(sys.argv[4]), 10_000):
            cache.append({"a": rows(keys_for(i * batch, batch), 256), "b": rows(keys_for(i * batch, 10), 2)})
            cache.commit()
            print("committed", i, flush=True)
            if mode == "compact" and i % 3 == 2:
                cache.compact()
                print("compacted", i, flush=True)
""")


def start_writer(folder, mode, first_batch=0):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(folder), mode, str(ROOT / "tests"), str(first_batch)],
                            cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def check_sound(folder, committed_batches):
    cache = FeatureCache(folder)
    assert cache.verify() == []
    have = sorted(cache.keys("a"))
    assert len(have) >= committed_batches * 3000  # nothing a finished commit wrote is lost
    sample = have[:: max(1, len(have) // 500)]
    np.testing.assert_array_equal(cache.read("a", sample), codes_for(sample, 256))  # and nothing is wrong
    return len(have)


@pytest.mark.parametrize("mode", ["commit", "compact"])
def test_sigkill_during_commit_or_compaction_leaves_a_sound_cache(tmp_path, mode):
    folder = cache_path(tmp_path, CONFIG)
    rng = np.random.default_rng(1)
    batches = 0  # batches 0..batches-1 were reported committed
    for attempt in range(3):
        proc = start_writer(folder, mode, batches)
        lines = []
        while len(lines) < 1 + attempt + (3 if mode == "compact" else 0):
            line = proc.stdout.readline()
            assert line, "the writer stopped by itself"
            lines.append(line)
        time.sleep(rng.uniform(0, 0.15))  # somewhere inside the next commit or compaction
        proc.send_signal(signal.SIGKILL)
        lines += proc.stdout.read().splitlines()
        proc.wait()
        batches = 1 + max(int(line.split()[1]) for line in lines if line.startswith("committed"))
        check_sound(folder, batches)
    cache = FeatureCache(folder, CONFIG)
    cache.commit()  # the next writer cleans up after the killed ones
    assert not [f for f in files_under(folder) if ".tmp-" in f]
    live = {s["name"] for s in cache.manifest()["segments"]}
    assert {p.name for p in cache.segments_dir.glob("seg-*.h5")} == live
    assert check_sound(folder, batches) >= batches * 3000


def test_a_reader_sees_consistent_snapshots_while_a_writer_commits_and_compacts(tmp_path):
    folder = cache_path(tmp_path, CONFIG)
    proc = start_writer(folder, "compact")
    try:
        assert proc.stdout.readline().startswith("committed")
        cache = FeatureCache(folder)
        seen, reads, deadline = 0, 0, time.time() + 8
        while time.time() < deadline and proc.poll() is None:
            have = cache.keys("b")
            assert len(have) >= seen  # rows never disappear, not even during a compaction
            seen = len(have)
            sample = sorted(have)[:: max(1, len(have) // 50)]
            a_keys = [f"{int(k, 16) + 5:032x}" for k in sample]  # row 5 of each batch in tap a
            np.testing.assert_array_equal(cache.read("a", a_keys), codes_for(a_keys, 256))
            reads += 1
        assert reads >= 3 and seen >= 30
    finally:
        proc.kill()
        proc.wait()


def test_export_npy_and_parquet_match_the_cache(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="export --format parquet needs the parquet extra")
    import pyarrow.parquet as pq

    cache = new_cache(tmp_path / "c")
    with cache:
        cache.append({"a": rows(keys_for(0, 30))})
        cache.commit()
        cache.append({"a": rows(keys_for(30, 30))})
        cache.commit()
    everything = export(cache, tmp_path / "npy", "npy", rows_per_file=25)
    emb = sorted((tmp_path / "npy" / "a" / "emb").glob("*.npy"))
    meta = sorted((tmp_path / "npy" / "a" / "metadata").glob("*.parquet"))
    assert len(emb) == len(meta) == 4 and everything["rows"] == {"a": 60}
    codes = np.concatenate([np.load(p) for p in emb])
    keys = [k for p in meta for k in pq.read_table(p)["key"].to_pylist()]
    np.testing.assert_array_equal(codes, codes_for(keys))
    assert sorted(keys) == keys_for(0, 60)
    asked = keys_for(50, 5) + ["f" * 32] + keys_for(2, 1)
    done = export(cache, tmp_path / "pq", "parquet", keys=asked, meta={"path": [f"p{i}" for i in range(7)]})
    assert done["missing"] == {"a": 1}
    table = pq.read_table(tmp_path / "pq" / "a.parquet")
    assert table["key"].to_pylist() == asked[:5] + asked[6:] and table["path"].to_pylist()[-1] == "p6"
    np.testing.assert_array_equal(np.stack(table["embedding"].to_numpy(zero_copy_only=False)), codes_for(asked[:5] + asked[6:]))
    assert isinstance(table.schema.field("embedding").type, pa.FixedSizeListType)


def test_cache_cli_on_a_folder(tmp_path, capsys):
    cache = new_cache(tmp_path)
    with cache:
        for s in (0, 10):
            cache.append({"a": rows(keys_for(s, 10))})
            cache.commit()
    from featx.cli import main

    assert main(["cache", "info", str(cache.path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["segments"] == 2 and info["folder"] == str(cache.path)
    assert info["file"] == str(cache.path / "view.h5")  # the one HDF5 file over the segments, not the folder
    with h5py.File(info["file"], "r") as f:
        assert f["taps/a/codes"].shape == (20, DIM)
    assert main(["cache", "compact", str(cache.path)]) == 0
    assert "2 segment(s) -> 1" in capsys.readouterr().out
    assert main(["cache", "verify", str(cache.path)]) == 0
    assert main(["cache", "export", str(cache.path), "--out", str(tmp_path / "e")]) == 0
    assert np.load(tmp_path / "e" / "a" / "emb" / "emb_00000.npy").shape == (20, DIM)
    assert main(["cache", "ls", "--cache", str(tmp_path)]) == 0
    assert "1 segment(s)  a 20x6" in capsys.readouterr().out
    assert main(["cache", "info", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("featx: error: ") and "no cache here" in err and len(err.strip().splitlines()) == 1
    assert "featx cache ls --cache DIR" in err


RAY_DRIVER = textwrap.dedent("""
    import sys
    import featx.engines.ray
    from featx.extract import extract
    featx.engines.ray.SEGMENT_ROWS = 2  # a segment per batch of 2: several shards to interrupt
    extract(sys.argv[1], cache_dir=sys.argv[2], batch_size=2, engine="ray", ray_address=sys.argv[3], num_workers=2)
""")


@pytest.mark.slow
def test_ray_workers_on_a_two_node_cluster_write_segments_and_resume(tmp_path, monkeypatch):
    """Workers on two nodes write their own segments; a killed driver and a killed worker lose nothing finished."""
    pytest.importorskip("ray", reason="the Ray engine needs its extra: pip install 'featx[ray]'")
    import ray
    from ray.cluster_utils import Cluster

    from featx.extract import extract, load_features
    from test_extract import make_dataset
    from test_ray import settle

    data = make_dataset(tmp_path / "data", per_class=10, seed=700)
    local = load_features(data, cache_dir=tmp_path / "local", batch_size=2)
    cache_dir = tmp_path / "c"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})  # an actor and decode tasks per node
    cluster.add_node(num_cpus=2)
    try:
        cluster.wait_for_nodes()
        proc = subprocess.Popen([sys.executable, "-c", RAY_DRIVER, str(data), str(cache_dir), cluster.address],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if len(list(cache_dir.glob("*/incoming/inc-*.h5"))) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be interrupted"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies: whole segments stay in incoming/
        proc.wait()
        settle(cache_dir)  # a worker still busy when the driver died may finish its segment
        folder = next(cache_dir.glob("*/incoming")).parent
        done = FeatureCache(folder).keys("pre_logits")
        assert 0 < len(done) < 20
        import featx.engines.ray

        monkeypatch.setattr(featx.engines.ray, "SEGMENT_ROWS", 2)
        marker = tmp_path / "worker-died"
        report = extract(data, cache_dir=cache_dir, batch_size=2, engine="ray", ray_address=cluster.address,
                         num_workers=2, _ray_crash_marker=str(marker))
        assert marker.exists()  # a worker died mid-run and its batch was retried
        assert report.cached == len(done) and report.computed == 20 - len(done)
        assert not list((folder / "incoming").glob("*")) and FeatureCache(folder).verify() == []
        feats = load_features(data, cache_dir=cache_dir, extract_missing=False)
        assert feats.keys == local.keys
        np.testing.assert_allclose(feats.codes["pre_logits"], local.codes["pre_logits"], atol=1e-4)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_segment_is_deleted_only_when_no_reader_is_taking_a_snapshot(tmp_path):
    import fcntl

    cache = new_cache(tmp_path)
    with cache:
        for s in (0, 10, 20):
            cache.append({"a": rows(keys_for(s, 10))})
            cache.commit()
    old = {p.name for p in cache.segments_dir.glob("seg-*.h5")}
    fd = os.open(cache.path / "readers.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a reader between reading the manifest and mapping its segments
    try:
        cache.compact()
        left = {p.name for p in cache.segments_dir.glob("seg-*.h5")}
        assert old <= left and len(left) == 4  # the old segments stay while the reader may need them
        np.testing.assert_array_equal(cache.read("a", keys_for(0, 30)), codes_for(keys_for(0, 30)))
    finally:
        os.close(fd)
    cache.commit()  # the next writer finds no reader and deletes them
    assert {p.name for p in cache.segments_dir.glob("seg-*.h5")} == {s["name"] for s in cache.manifest()["segments"]}
    assert len(cache.manifest()["segments"]) == 1


def test_cli_export_with_a_dataset_gives_paths_and_labels_in_its_order(tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet", reason="the metadata is Parquet with the parquet extra")
    from conftest import make_photo, write_image
    from featx.cache import content_key
    from featx.cli import main

    paths = [write_image(tmp_path / "data" / cls / f"{cls}{i}.png", make_photo(900 + 10 * c + i))
             for c, cls in enumerate(("ant", "bee")) for i in range(3)]
    keys = [content_key(p.read_bytes()) for p in paths]
    cache = new_cache(tmp_path / "c")
    with cache:
        cache.append({"a": rows(keys[1:])})  # the first image has no row
        cache.commit()
    assert main(["cache", "export", str(cache.path), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "e")]) == 0
    assert "a: 5 rows (1 of DATA's images have no row)" in capsys.readouterr().out
    meta = pq.read_table(tmp_path / "e" / "a" / "metadata" / "metadata_00000.parquet").to_pydict()
    assert meta["key"] == keys[1:] and meta["label"] == ["ant", "ant", "bee", "bee", "bee"]
    assert [Path(p).name for p in meta["path"]] == [p.name for p in paths[1:]]
    np.testing.assert_array_equal(np.load(tmp_path / "e" / "a" / "emb" / "emb_00000.npy"), codes_for(keys[1:]))


def test_a_commit_adopting_many_worker_segments_merges_them_into_one(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_commit, "MERGE_ADOPTED_OVER", 2)
    cache = new_cache(tmp_path)
    with cache:
        cache.append({"a": rows(keys_for(0, 10))})
        cache.commit()
    for s in (5, 20, 30, 30):  # overlaps the committed rows, and a retried batch
        cache.add_segment({"a": rows(keys_for(s, 10)), "b": rows(keys_for(s, 3), 2)})
    cache.commit()
    segs = cache.manifest()["segments"]
    assert [s["taps"]["a"]["rows"] for s in segs] == [10, 25]
    assert cache.info()["taps"]["b"]["rows"] == 9
    present = keys_for(0, 15) + keys_for(20, 20)
    np.testing.assert_array_equal(cache.read("a", present), codes_for(present))
    assert cache.keys("a") == set(present)
    np.testing.assert_array_equal(cache.read("b", keys_for(30, 3)), codes_for(keys_for(30, 3), 2))
    assert cache.verify() == []
    assert {p.name for p in cache.segments_dir.glob("seg-*.h5")} == {s["name"] for s in segs}


def one_error_line(capsys, *names):
    """The command's stderr: one 'featx: error:' line naming each of ``names``, no traceback."""
    out = capsys.readouterr()
    assert out.err.startswith("featx: error: ") and len(out.err.strip().splitlines()) == 1, out.err
    assert "Traceback" not in out.err + out.out
    for name in names:
        assert name in out.err, out.err
    return out.err


def two_segment_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_segments, "_MAPS", type(cache_segments._MAPS)())  # no mapping from before the damage
    cache = new_cache(tmp_path)
    with cache:
        for s in (0, 10):
            cache.append({"a": rows(keys_for(s, 10))})
            cache.commit()
    cache_segments._MAPS.clear()
    return cache


@pytest.mark.parametrize("damage", ["truncated", "cut", "empty", "folder gone"])
def test_a_damaged_segment_is_a_one_line_error_naming_it_for_every_read(tmp_path, capsys, monkeypatch, damage):
    from featx.cli import main

    cache = two_segment_cache(tmp_path, monkeypatch)
    manifest = cache.manifest_path.read_bytes()
    first, seg = [cache.segments_dir / s["name"] for s in cache.manifest()["segments"]]
    if damage == "folder gone":
        for p in cache.segments_dir.iterdir():
            p.unlink()
        cache.segments_dir.rmdir()
        named = first.name
    else:
        codes_at = cache.manifest()["segments"][1]["taps"]["a"]["offsets"]["codes"]
        size = {"truncated": 100, "cut": codes_at + 10, "empty": 0}[damage]  # cut: inside the codes
        data = seg.read_bytes()[:size]
        seg.unlink()
        seg.write_bytes(data)  # a new file, as `head -c 100 seg > t && mv t seg` leaves
        named = seg.name
    for call in (lambda: cache.keys("a"), lambda: cache.keys("a", among=keys_for(15, 2)),
                 lambda: cache.contains("a", keys_for(0, 1)), lambda: cache.read("a", keys_for(0, 1))):
        with pytest.raises(FeatxError, match=named) as err:
            call()
        assert f"featx cache verify {cache.path}" in str(err.value) and "\n" not in str(err.value)
    assert main(["cache", "export", str(cache.path), "--out", str(tmp_path / "e")]) == 2
    one_error_line(capsys, named, f"featx cache verify {cache.path}")
    assert main(["cache", "compact", str(cache.path)]) == 2
    err = one_error_line(capsys, named, f"featx cache verify {cache.path}")
    assert ("missing" in err) == (damage == "folder gone")
    assert main(["cache", "info", str(cache.path)]) == 0  # the manifest only: describes a damaged cache too
    capsys.readouterr()
    assert main(["cache", "verify", str(cache.path)]) == 1
    assert named in capsys.readouterr().out
    # nothing finished was lost or rewritten: same manifest, the sound segment kept, no temporary file left
    assert cache.manifest_path.read_bytes() == manifest
    if damage != "folder gone":
        assert first.exists() and not list(cache.segments_dir.glob(".tmp-*"))


def test_a_damaged_journal_part_or_incoming_segment_is_named_with_what_to_do(tmp_path, capsys, monkeypatch):
    cache = two_segment_cache(tmp_path, monkeypatch)
    cache.journal.mkdir()
    part = cache.journal / "part-00000000000000000001-1-000001.npz"
    part.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(FeatxError, match=f"{part.name}.*delete {part.name}"):
        cache.keys("a")
    part.unlink()
    inc = cache.add_segment({"a": rows(keys_for(40, 3))})
    inc.write_bytes(inc.read_bytes()[:100])
    with pytest.raises(FeatxError, match=f"{inc.name}.*delete {inc.name}"):
        cache.read("a", keys_for(0, 1))


def test_export_of_an_unknown_tap_lists_the_caches_taps(tmp_path, capsys, monkeypatch):
    from featx.cli import main

    cache = two_segment_cache(tmp_path, monkeypatch)
    assert main(["cache", "export", str(cache.path), "--taps", "a,bogus", "--out", str(tmp_path / "e")]) == 2
    err = one_error_line(capsys, "--taps", "'bogus'", "its taps: a")
    assert "'a'" not in err and not (tmp_path / "e").exists()


def test_a_corrupt_manifest_message_fits_the_command(tmp_path, capsys, monkeypatch):
    from featx.cli import main

    cache = two_segment_cache(tmp_path, monkeypatch)
    cache.manifest_path.write_text('{"config": ')
    assert main(["cache", "verify", str(cache.path)]) == 1
    out = capsys.readouterr().out
    assert "MANIFEST.json is damaged" in out and "featx cache verify" not in out
    assert f"featx cache repair {cache.path}" in out
    assert main(["cache", "export", str(cache.path), "--out", str(tmp_path / "e")]) == 2
    err = one_error_line(capsys, str(cache.manifest_path), f"featx cache repair {cache.path}")
    assert "featx cache verify" not in err  # it could say nothing more
    cache.manifest_path.write_text("[]")  # JSON, but not a manifest
    with pytest.raises(FeatxError, match="not a cache manifest"):
        cache.keys("a")
