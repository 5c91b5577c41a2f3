"""Issue 24's folder-tree fuzzer in CI: random small trees scanned (a few dozen, seconds), and two trees run through
extract, fit-head, predict and cache export via ``featx.cli.main``.  ``scripts/fuzz_folders.py`` runs it longer."""

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings

from folder_trees import build, check_scan, trees
from featx.cli import main
from featx.datasets import scan
from featx.errors import FeatxError

#: Exit statuses a command may end with on any tree (0 done, 2 bad input, 3 done with skipped images); 1 is an
#: unexpected error and fails the test.
DOCUMENTED = {0, 2, 3}


def scan_and_check(steps) -> None:
    with tempfile.TemporaryDirectory(prefix="featx-fuzz-") as tmp:
        data, _ = build(steps, Path(tmp))
        for every_image in (False, True):
            try:
                ds = scan(data, every_image=every_image)
            except FeatxError as exc:  # no images, or two class folders the same after NFC: one line
                assert "\n" not in str(exc) and str(exc)
                continue
            check_scan(ds, data, every_image)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees())
def test_every_image_is_used_once_under_its_own_label_or_named(steps):
    scan_and_check(steps)


def run_commands(steps, cache: Path) -> list[tuple[str, int, str]]:
    """extract, fit-head, predict and cache export on one tree; (command, status, stderr) of each."""
    done = []
    with tempfile.TemporaryDirectory(prefix="featx-fuzz-") as tmp:
        data, _ = build(steps, Path(tmp))
        out = Path(tmp) / "out"
        commands = [["extract", str(data), "--cache", str(cache), "--engine", "keras"],
                    ["fit-head", str(data), "--cache", str(cache), "--out", str(out), "--engine", "keras",
                     "--val-fraction", "0", "--test-fraction", "0.3", "--head", "knn"],
                    ["predict", str(out / "model.featx"), str(data), "--cache", str(cache), "--engine", "keras"]]
        for argv in commands + [["cache", "export", None, "--data", str(data), "--out", str(Path(tmp) / "export")]]:
            if argv[0] == "predict" and not (out / "model.featx").exists():
                continue
            if argv[0] == "cache":  # the cache folder extract made (none when it found no image)
                caches = sorted(cache.glob("mobilenet_v2-*"))
                if not caches:
                    continue
                argv[2] = str(caches[0])
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                status = main(argv)
            done.append((argv[0] if argv[0] != "cache" else "cache export", status, err.getvalue()))
    return done


def check_commands(done) -> None:
    for command, status, err in done:
        assert status in DOCUMENTED, f"{command} exited {status}: {err}"
        assert "Traceback" not in err, f"{command}: {err}"
        errors = [line for line in err.splitlines() if line.startswith("featx: error:")]
        assert (status == 2) == bool(errors) and len(errors) <= 1, f"{command} exited {status}: {err}"


#: One tree that always runs every command to the end (random trees may stop at "no images"): two classes, one of
#: them a Latin-1 name, a loose image, a link back up, a copy under the other label, a non-image named .jpg.
WHOLE_RUN = [("image", ("cat", f"img{i}.png"), i) for i in range(3)] + \
    [("image", (os.fsdecode(b"gr\xfcn"), os.fsdecode(b"caf\xe9%d.jpg" % i)), 3 + i) for i in range(3)] + \
    [("image", ("loose.png",), 1), ("cycle", ("cat", "loop"), 1), ("copy", ("cat", "copy.png"), ("cat", "img0.png")),
     ("text", ("cat", "broken.jpg"), "not an image")]


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
          database=None)
@example(WHOLE_RUN)
@given(trees(max_images=10))
def test_extract_fit_predict_export_on_random_trees_never_trace_back(steps):
    cache = Path(tempfile.mkdtemp(prefix="featx-fuzz-cache-"))
    try:
        check_commands(run_commands(steps, cache))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    assert not os.environ.get("FEATX_DEBUG")
