"""Crash-and-damage harness for the feature cache: kills at every file-system step, damage of every file kind.

Kills.  Each operation (``extract``: journal two parts and commit; ``fold``: commit a killed run's
journal; ``adopt``: commit workers' incoming segments; ``compact``; ``export``; ``repair``) runs in
a child process whose ``os.replace``, ``os.fsync``, ``os.unlink``, ``os.link``, ``os.rename``,
``os.rmdir`` and ``os.mkdir`` are counted: a dry run counts the steps, then one trial per step (or a
sample of them) SIGKILLs the child just before that step.  After each kill, and again after the
next writer's commit, an independent reader (``json`` + plain ``h5py``, no featx code) reads every
committed row, and featx reads them too; every row's codes are a function of its key, so a wrong,
lost or invented row shows.

Damage.  Every file kind the cache holds (``MANIFEST.json``, ``RECORD.json``, a segment,
``view.h5``, a journal part, an incoming segment, ``failed-decodes.json``) is truncated, has bytes
flipped, is deleted, or (JSON files) is replaced by JSON of the wrong shape (segments ``["x"]``, a
missing ``offsets``, ``rows: "20"``, an offset shifted by 4 bytes, dtype ``float16``, ...); then
featx reads every row, verifies, commits and exports.  Each call must give the right rows or a
one-line :class:`featx.errors.FeatxError`; anything else is a crash.

Counts printed: trials, unreadable caches (the independent reader or featx refused: after a kill
this must be 0; after damage it is expected, and must be an error naming the file), crashes (not a
FeatxError), wrong rows, lost rows (a committed row missing from a read that succeeded),
invented rows.

Run: ``PYTHONPATH=$PWD python scripts/cache_harness.py`` (every kill point; a few minutes) or
``--quick`` (a sample, as the CI test runs it).  Exit status 1 when a kill made a cache
unreadable or any wrong, lost or invented row or crash was seen.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"backbone": "toy", "pooling": "avg", "dtype": "float32"}
DIM = 8
TAP = "a"


def keys_for(start: int, n: int) -> list[str]:
    return [f"{i:032x}" for i in range(start, start + n)]


def codes_for(keys) -> np.ndarray:
    """Codes that are a function of the key: any wrong or shifted row shows."""
    base = np.array([int(k, 16) % 100_003 for k in keys], np.float32)
    return base[:, None] + np.arange(DIM, dtype=np.float32)[None, :] / 8


def folder_in(workdir: Path, name: str) -> Path:
    """A cache folder named as featx names it (its configuration's hash), inside ``workdir/name``."""
    from featx.cache import cache_path

    return cache_path(workdir / name, CONFIG)


def fresh_copy(template: Path, folder: Path) -> None:
    shutil.rmtree(folder.parent, ignore_errors=True)
    folder.parent.mkdir(parents=True)
    shutil.copytree(template, folder)


def rows(keys):
    from featx.cache import TapRows

    return {TAP: TapRows(np.asarray(keys, "S32"), codes_for(keys))}


# ---- the caches a trial starts from ---------------------------------------------------------------
def build(folder: Path) -> set:
    """Three committed segments of 40 rows; returns the committed keys."""
    from featx.cache import FeatureCache

    cache = FeatureCache(folder, CONFIG)
    with cache:
        for s in (0, 40, 80):
            cache.append(rows(keys_for(s, 40)))
            cache.commit()
    return set(keys_for(0, 120))


PENDING = {"extract": keys_for(200, 30), "fold": keys_for(300, 30), "adopt": keys_for(400, 30)}


def prepare(op: str, folder: Path) -> tuple[set, set]:
    """A cache ready for ``op``: (committed keys, keys the op may add)."""
    from featx.cache import FeatureCache

    committed = build(folder)
    cache = FeatureCache(folder, CONFIG)
    if op == "fold":
        cache.append(rows(PENDING["fold"][:15]))
        cache.append(rows(PENDING["fold"][10:]))  # overlapping parts
    if op == "adopt":
        cache.add_segment(rows(PENDING["adopt"][:20]))
        cache.add_segment(rows(PENDING["adopt"][15:]))
    if op == "repair":
        (folder / "MANIFEST.json").unlink()
    return committed, set(PENDING.get(op, []))


CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[4])
    kill_at, count = int(sys.argv[3]), [0]

    def counted(fn):
        def step(*a, **k):
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*a, **k)
        return step

    import cache_harness as h
    from featx.cache import FeatureCache, export
    folder, op = sys.argv[1], sys.argv[2]
    cache = FeatureCache(folder, h.CONFIG)
    for name in ("replace", "fsync", "unlink", "link", "rename", "rmdir", "mkdir"):
        setattr(os, name, counted(getattr(os, name)))
    if op == "extract":
        with cache:
            cache.append(h.rows(h.PENDING["extract"][:20]))
            cache.append(h.rows(h.PENDING["extract"][20:]))
            cache.commit()
    elif op in ("fold", "adopt"):
        cache.commit()
    elif op == "compact":
        cache.compact()
    elif op == "export":
        export(cache, folder + "-export", "npy", rows_per_file=50)
    elif op == "repair":
        cache.repair()
    print("DONE", count[0], flush=True)
""")


def run_child(folder: Path, op: str, kill_at: int) -> tuple[bool, int]:
    """(whether the child finished, the steps it counted)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), op, str(kill_at), str(ROOT / "scripts")],
                         capture_output=True, text=True, env=env, timeout=120)
    done = [line for line in out.stdout.splitlines() if line.startswith("DONE")]
    if not done and out.returncode != -9:
        raise RuntimeError(f"{op} child failed: {out.stderr[-2000:]}")
    return bool(done), int(done[0].split()[1]) if done else kill_at


# ---- the independent reader -----------------------------------------------------------------------
def independent_rows(folder: Path) -> dict:
    """{key: codes} of every committed row, read with json and plain h5py only (raises when unreadable)."""
    with open(folder / "MANIFEST.json") as fh:
        m = json.load(fh)
    out = {}
    for seg in m["segments"]:
        if TAP not in seg["taps"]:
            continue
        with h5py.File(folder / "segments" / seg["name"], "r") as f:
            keys = f[f"taps/{TAP}/keys"][:].astype("U32").tolist()
            codes = f[f"taps/{TAP}/codes"][:]
        if len(keys) != seg["taps"][TAP]["rows"]:
            raise ValueError(f"{seg['name']}: {len(keys)} rows, the manifest says {seg['taps'][TAP]['rows']}")
        for k, c in zip(keys, codes):
            if k in out:
                raise ValueError(f"key {k} in two segments")
            out[k] = c
    return out


def view_rows(folder: Path) -> dict | None:
    """{key: codes} through ``view.h5`` with plain h5py (None: no view)."""
    if not (folder / "view.h5").exists():
        return None
    with h5py.File(folder / "view.h5", "r") as f:
        if f"taps/{TAP}" not in f:
            return {}
        keys = f[f"taps/{TAP}/keys"][:].astype("U32").tolist()
        return dict(zip(keys, f[f"taps/{TAP}/codes"][:]))


def wrong(found: dict) -> int:
    """Rows whose codes are not their key's (NaN included)."""
    if not found:
        return 0
    keys = list(found)
    got = np.stack([found[k] for k in keys])
    return int((~np.all(got == codes_for(keys), axis=1)).sum())


def check_after_kill(folder: Path, committed: set, added: set, finished: bool, tally: collections.Counter,
                     label: str) -> None:
    """One kill trial's counts: unreadable, wrong, lost, invented (independent reader, view, featx)."""
    from featx.cache import FeatureCache
    from featx.errors import FeatxError

    tally["trials"] += 1
    try:
        found = independent_rows(folder)
    except Exception as exc:  # noqa: BLE001 -- any failure of the plain reader is an unreadable cache
        tally["unreadable caches"] += 1
        tally.setdefault("examples", []).append(f"{label}: independent reader: {exc}")
        return
    must = committed | (added if finished else set())
    keys = set(found)
    lost, invented = must - keys, keys - (committed | added)
    tally["lost rows"] += len(lost)
    tally["invented rows"] += len(invented)
    tally["wrong rows"] += wrong(found)
    view = view_rows(folder)
    if view is not None:
        tally["wrong rows"] += wrong(view) + len(set(view) ^ keys)
    try:
        cache = FeatureCache(folder)
        problems = cache.verify()
        if problems:
            raise FeatxError("; ".join(problems))
        ordered = sorted(keys)
        got = cache.read(TAP, ordered) if ordered else np.zeros((0, DIM), np.float32)
        tally["wrong rows"] += int((~np.all(got == codes_for(ordered), axis=1)).sum()) if ordered else 0
        tally["lost rows"] += len(must - cache.keys(TAP))
    except Exception as exc:  # noqa: BLE001
        tally["unreadable caches"] += 1
        tally.setdefault("examples", []).append(f"{label}: featx: {exc}")


def check_export(folder: Path, tally: collections.Counter, label: str) -> None:
    """An export folder is absent or whole: every committed row once, right."""
    out = Path(str(folder) + "-export")
    if not out.exists():
        return
    keys, codes = [], []
    for meta in sorted((out / TAP / "metadata").glob("metadata_*")):
        emb = out / TAP / "emb" / ("emb_" + meta.stem.split("_")[1] + ".npy")
        if meta.suffix == ".csv":
            keys += [line.split(",")[0] for line in meta.read_text().splitlines()[1:]]
        else:
            import pyarrow.parquet as pq

            keys += pq.read_table(meta)["key"].to_pylist()
        codes.append(np.load(emb))
    found = dict(zip(keys, np.concatenate(codes) if codes else []))
    if len(keys) != len(found) or set(keys) != set(independent_rows(folder)):
        tally["export not whole"] += 1
        tally.setdefault("examples", []).append(f"{label}: export holds {len(keys)} rows")
    tally["wrong rows"] += wrong(found)


def kill_trials(workdir: Path, ops, sample: int | None, tally: collections.Counter) -> None:
    """For each op: a dry run counts its steps; then a kill before each step (or ``sample`` of them)."""
    os.environ["FEATX_CACHE_GRACE"] = "0"
    for op in ops:
        template = folder_in(workdir, f"template-{op}")
        shutil.rmtree(template.parent, ignore_errors=True)
        committed, added = prepare(op, template)
        if op == "repair":
            committed, added = set(), committed  # the rows come back with the repair
        dry = folder_in(workdir, "dry")
        fresh_copy(template, dry)
        _, steps = run_child(dry, op, 0)
        points = list(range(1, steps + 1))
        if sample is not None and len(points) > sample:
            points = sorted(set(np.linspace(1, steps, sample).round().astype(int).tolist()))
        for n in points:
            trial = folder_in(workdir, f"trial-{op}")
            fresh_copy(template, trial)
            finished, _ = run_child(trial, op, n)
            label = f"kill {op} at step {n}/{steps}"
            if op == "repair" and not (trial / "MANIFEST.json").exists():
                # killed before its manifest: still damage; the repair is run again
                run_child(trial, op, 0)
                finished = True
            check_after_kill(trial, committed, added, finished, tally, label)
            if op == "export":
                check_export(trial, tally, label)
            from featx.cache import FeatureCache

            FeatureCache(trial, CONFIG).commit()  # the next writer cleans up and folds in what is pending
            check_after_kill(trial, committed, added, finished or op in ("fold", "adopt"), tally,
                             label + ", then a commit")
        tally[f"kill points {op}"] = len(points)


# ---- damage ----------------------------------------------------------------------------------------
def damaged_caches(workdir: Path, kinds=None):
    """(label, folder, committed keys, file kind) for every file kind (or those in ``kinds``) and damage."""
    from featx.cache import FeatureCache

    template = folder_in(workdir, "damage-template")
    shutil.rmtree(template.parent, ignore_errors=True)
    committed = build(template)
    cache = FeatureCache(template, CONFIG)
    cache.append(rows(keys_for(500, 5)))
    cache.add_segment(rows(keys_for(600, 5)))
    (template / "failed-decodes.json").write_text(json.dumps({"failures": {"x:" + "0" * 32: "not an image"}}))
    m = json.loads((template / "MANIFEST.json").read_text())
    first = m["segments"][0]
    files = {"manifest": template / "MANIFEST.json", "record": template / "RECORD.json",
             "segment": template / "segments" / first["name"], "view": template / "view.h5",
             "journal part": next((template / "journal").glob("part-*.npz")),
             "incoming": next((template / "incoming").glob("inc-*.h5")),
             "failed decodes": template / "failed-decodes.json"}
    for kind, path in files.items():
        if kinds is not None and kind not in kinds:
            continue
        modes = ["truncate", "flip header", "flip codes", "delete"]
        if path.suffix == ".json":
            modes += [f"json {name}" for name in wrong_json(kind, m)]
        for mode in modes:
            folder = folder_in(workdir, "damage")
            fresh_copy(template, folder)
            target = folder / path.relative_to(template)
            damage(target, mode, kind, m, first)
            yield f"{kind}: {mode}", folder, committed, kind


def wrong_json(kind: str, m: dict) -> dict:
    """Named JSON texts of the right syntax but the wrong shape, for ``kind``."""
    if kind == "manifest":
        seg = m["segments"][0]
        info = seg["taps"][TAP]

        def edited(fn):
            c = json.loads(json.dumps(m))
            fn(c, c["segments"][0], c["segments"][0]["taps"][TAP])
            return json.dumps(c)

        return {"list": "[]", "segments strings": json.dumps({**m, "segments": ["x"]}),
                "no offsets": edited(lambda c, s, t: t.pop("offsets")),
                "rows a string": edited(lambda c, s, t: t.update(rows=str(info["rows"]))),
                "codes offset +4": edited(lambda c, s, t: t["offsets"].update(codes=info["offsets"]["codes"] + 4)),
                "dtype float16": edited(lambda c, s, t: t.update(dtype="float16")),
                "rows +1": edited(lambda c, s, t: t.update(rows=info["rows"] + 1)),
                "generation -1": edited(lambda c, s, t: c.update(generation=-1)),
                "bytes wrong": edited(lambda c, s, t: s.update(bytes=seg["bytes"] - 1))}
    if kind == "record":
        return {"list": "[]", "segments list": json.dumps({"segments": ["x"]}), "generation str": json.dumps(
            {"generation": "1", "segments": {}})}
    return {"failures list": json.dumps({"failures": [1, 2]}), "list": "[]", "reason int": json.dumps(
        {"failures": {"k": 1}})}


def damage(path: Path, mode: str, kind: str, m: dict, first: dict) -> None:
    if mode == "delete":
        path.unlink()
        return
    if mode.startswith("json "):
        path.write_text(wrong_json(kind, m)[mode[5:]])
        return
    data = bytearray(path.read_bytes())
    if mode == "truncate":
        data = data[: len(data) // 2]
    elif mode == "flip header":
        for i in (len(data) // 50, len(data) // 50 + 1):
            data[i] ^= 0xFF
    else:  # flip codes: a byte inside the first row of codes (a segment or incoming one), else mid-file
        at = len(data) // 2
        if path.suffix == ".h5" and kind != "view":
            with h5py.File(path, "r") as f:
                at = f[f"taps/{TAP}/codes"].id.get_offset() + 5
        data[at] ^= 0x10
    path.unlink()  # a new file, as an editor or a copy leaves
    path.write_bytes(bytes(data))


def damage_trials(workdir: Path, tally: collections.Counter, kinds=None) -> None:
    """Every damaged cache: featx reads all rows, verifies, commits, exports; right rows or a one-line error."""
    from featx.cache import FeatureCache, export
    from featx.cache import segments as cache_segments
    from featx.errors import FeatxError
    from featx.failed import DecodeFailures

    os.environ["FEATX_CACHE_GRACE"] = "0"
    everything = keys_for(0, 120)
    for label, folder, committed, kind in damaged_caches(workdir, kinds):
        cache_segments._MAPS.clear()  # nothing mapped from before the damage
        tally["damage trials"] += 1
        calls = {"keys": lambda c: c.keys(TAP), "read": lambda c: c.read(TAP, everything),
                 "verify": lambda c: c.verify(), "failed": lambda c: DecodeFailures(c.path).remembered(),
                 "commit": lambda c: FeatureCache(c.path, CONFIG).commit(),
                 "export": lambda c: export(c, str(folder) + "-export", "npy")}
        refused = False
        for name, call in calls.items():
            cache = FeatureCache(folder)
            try:
                got = call(cache)
            except FeatxError as exc:
                refused = True
                if "\n" in str(exc):
                    tally["errors of more than one line"] += 1
                continue
            except Exception as exc:  # noqa: BLE001
                tally["crashes"] += 1
                tally.setdefault("examples", []).append(f"damage {label}: {name}: {type(exc).__name__}: {exc}")
                continue
            if name == "keys":
                tally["lost rows"] += len(committed - got)
                tally["invented rows"] += len(got - committed - set(keys_for(500, 5)) - set(keys_for(600, 5)))
            elif name == "read":
                tally["wrong rows"] += int((~np.all(got == codes_for(everything), axis=1)).sum())
            elif name == "verify" and not got and kind not in ("record", "failed decodes") and "delete" not in label:
                tally["damage verify missed"] += 1
                tally.setdefault("examples", []).append(f"damage {label}: verify found nothing")
        tally["damage refused (one-line error)"] += refused
        shutil.rmtree(str(folder) + "-export", ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a sample of 4 kill points per operation")
    p.add_argument("--workdir", default=None, help="where the caches go (default: a temporary folder)")
    p.add_argument("--ops", default="extract,fold,adopt,compact,export,repair")
    args = p.parse_args(argv)
    tally = run(Path(args.workdir) if args.workdir else None, args.ops.split(","), 4 if args.quick else None)
    examples = tally.pop("examples", [])
    for name, n in sorted(tally.items()):
        print(f"{name}: {n}")
    for line in examples[:20]:
        print("  " + line)
    bad = sum(tally[k] for k in ("unreadable caches", "wrong rows", "lost rows", "invented rows", "crashes",
                                 "export not whole", "errors of more than one line"))
    return 1 if bad else 0


def run(workdir: Path | None, ops, sample: int | None, kinds=None) -> collections.Counter:
    """Every kill trial of ``ops`` (``sample`` points each, None: all) and every damage trial (of the
    file ``kinds`` given, None: all); the counts."""
    tally: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        kill_trials(work, ops, sample, tally)
        damage_trials(work, tally, kinds)
    return tally


if __name__ == "__main__":
    sys.exit(main())
