"""featx check and what it reuses: near-duplicates, label issues, outliers, leakage-adjusted accuracy, pages.

The analyses run on synthetic codes (fast, exact); the pages on small generated photos; one end-to-end run of
``featx check`` and one of ``fit-head`` go through the real backbone (Keras engine, as every test).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_photo, require_extra, write_image
from featx.check import CheckOptions, analyse, write_check
from featx.cli import main
from featx.errors import FeatxError
from featx.gallery import MAX_THUMBNAILS, ThumbnailBudget, card, error_gallery_html, plot_codes_map, \
    write_run_gallery
from featx.quality import DuplicateGroups, label_issues, near_duplicates, neighbours, outliers


def clustered_codes(n_per_class=30, classes=3, d=64, seed=0):
    """Codes in ``classes`` well separated clusters, non-negative like ReLU codes; labels as str."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 4
    y = np.repeat(np.arange(classes), n_per_class)
    X = np.abs(centres[y] + rng.normal(size=(len(y), d)))
    return X.astype(np.float32), y.astype(str)


def test_planted_copies_are_grouped_and_distinct_codes_are_not():
    X, _ = clustered_codes()
    rng = np.random.default_rng(1)
    copies = {5: 0, 40: 0, 70: 1}  # original row -> how many extra copies
    rows = [X]
    planted = []
    n = len(X)
    for orig, extra in copies.items():
        for _ in range(1 + extra):
            rows.append((X[orig] * 1.1 + 0.02 * rng.normal(size=X.shape[1]))[None])  # brighter, a little noise
            planted.append((orig, n))
            n += 1
    X2 = np.concatenate(rows)
    dup = near_duplicates(X2, 0.99)
    assert len(dup.groups) == 3
    for orig, copy in planted:
        assert dup.group_of[orig] == dup.group_of[copy] >= 0
    assert sorted(map(len, dup.groups)) == [2, 2, 3]  # the original with its two copies is one group
    assert (dup.group_of >= 0).sum() == 7  # no distinct row joins any group
    assert np.all(dup.pair_similarity >= 0.99)


def test_union_find_joins_chains_and_groups_order_by_similarity():
    a = np.array([1.0, 0, 0, 0])
    b = np.array([0.97, 0.243, 0, 0])  # cos(a, b) ~ 0.97
    c = np.array([0.88, 0.475, 0, 0])  # cos(b, c) ~ 0.97, cos(a, c) ~ 0.88
    d = np.array([0, 0, 1.0, 0])
    e = np.array([0, 0, 0.999, 0.045])
    dup = near_duplicates(np.stack([a, b, c, d, e]), 0.95)
    assert dup.groups == [[3, 4], [0, 1, 2]]  # chained a-b-c is one group; the closer pair comes first
    assert dup.leaked(np.array(["train", "test", "val", "test", "test"])).tolist() == [0, 1, 0, 0, 0]
    keys = dup.group_keys(["k0", "k1", "k2", "k3", "k4"])
    assert keys[0] == keys[1] == keys[2] != keys[3] == keys[4]


def test_planted_label_flip_is_ranked_first():
    X, y = clustered_codes(20, 3)
    y = y.copy()
    y[7] = "2"  # a row of class 0 labelled 2
    issues = label_issues(X, y)
    assert issues.ranked[0] == 7
    assert issues.flagged[7] and issues.suggested[7] == "0"
    assert issues.flagged.sum() <= 2


def test_outlier_far_from_every_class_ranks_first():
    X, _ = clustered_codes(20, 3, seed=2)
    X[11] = np.abs(np.random.default_rng(9).normal(size=X.shape[1])) * 10  # belongs to no cluster
    scores = outliers(neighbours(X, 5))
    assert int(np.argmax(scores)) == 11


def test_bad_codes_and_options_are_one_line_errors():
    with pytest.raises(FeatxError, match="NaN"):
        near_duplicates(np.array([[1.0, np.nan], [1.0, 0.0]]))
    with pytest.raises(FeatxError, match="cosine"):
        near_duplicates(np.eye(3), 1.5)
    with pytest.raises(FeatxError, match="one image"):
        label_issues(np.eye(3), np.array(["a", "a", "b"]))


def test_one_image_per_class_names_the_class_plainly_and_no_fake_option():
    """*Why*: featx check said `--labels: class np.str_('a') has one image`: no such option, numpy's repr leaked."""
    with pytest.raises(FeatxError) as caught:
        label_issues(np.eye(2), np.asarray(["a", "b"]).astype(str))
    assert str(caught.value) == ("class 'a' has one image (and 1 other class(es) too); label checks need at least "
                                 "two images per class: add images to it, or leave it out")
    assert caught.value.param is None
    with pytest.raises(FeatxError, match="threshold"):
        CheckOptions(threshold=0)


def test_leakage_adjusted_accuracy_is_the_accuracy_over_the_other_test_images():
    from featx.training.fit import near_duplicate_metrics

    class Obj:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    split = np.array(["train", "test", "test", "test", "val", "test", "test"])
    # groups: (0 train, 1 test) leaks; (2 test, 3 test) does not; (4 val, 5 test) leaks
    dup = DuplicateGroups([[0, 1], [2, 3], [4, 5]], np.array([[0, 1], [2, 3], [4, 5]]),
                          np.array([0.99, 0.98, 0.97], dtype=np.float32),
                          np.array([0, 0, 1, 1, 2, 2, -1]), 0.92)
    y = np.array(["a", "a", "b", "b", "a"])  # test rows 1, 2, 3, 5, 6
    pred = np.array(["a", "b", "b", "a", "a"])  # right (leaked), wrong, right, wrong (leaked), right
    features = Obj(paths=[f"img{i}.jpg" for i in range(7)])
    design = Obj(duplicates=dup, split=split, rows=[np.arange(7)], codes=Obj(features=features))
    plan = Obj(options=Obj(near_duplicates="report"))
    evaluation = Obj(split="test", y=y, pred=pred, summary={"accuracy": 0.6})
    m = near_duplicate_metrics(plan, design, Obj(fit_splits=["train", "val"]), evaluation)
    assert m["leaked_test_images"] == 2 and m["leaked"] == ["img1.jpg", "img5.jpg"]
    assert m["test_accuracy_without_leaked"] == pytest.approx(2 / 3)  # rows 2, 3, 6: wrong, right, right
    assert m["test_without_leaked"]["n"] == 3
    assert m["straddling_groups"] == 2
    assert [p[:4] for p in m["top_pairs"]] == [["img0.jpg", "train", "img1.jpg", "test"],
                                              ["img4.jpg", "val", "img5.jpg", "test"]]
    # refit=False: the model never saw val, so the val copy does not leak
    m = near_duplicate_metrics(plan, design, Obj(fit_splits=["train"]), evaluation)
    assert m["leaked"] == ["img1.jpg"] and m["test_accuracy_without_leaked"] == pytest.approx(2 / 4)


# ---- pages in a browser -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module's pages (starting it costs seconds)."""
    sync_api = require_extra("playwright.sync_api", "the pages are opened in Chromium")
    with sync_api.sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path="/usr/bin/chromium")
        except Exception as exc:  # noqa: BLE001 - no browser on this machine
            pytest.skip(f"Chromium cannot start here: {exc}")
        yield chromium
        chromium.close()


def open_page(browser, page_path, screenshot=None):
    """Open ``page_path``; returns (every img's naturalWidth, requests that left the page).

    Every request is routed: file:// and data: pass, anything else is recorded and aborted.
    """
    outside = []
    page = browser.new_page(viewport={"width": 1200, "height": 900})

    def route(r):
        if r.request.url.startswith(("file:", "data:")):
            return r.continue_()
        outside.append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    page.goto(page_path.as_uri())
    page.wait_for_load_state("load")
    page.evaluate("() => Promise.all([...document.images].map(i => { i.loading = 'eager'; "
                  "return i.complete ? 0 : new Promise(r => { i.onload = i.onerror = r; }); }))")
    widths = page.evaluate("() => [...document.images].map(i => i.naturalWidth)")
    if screenshot:
        page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    return widths, outside


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    return [write_image(root / f"p{i}.jpg", make_photo(i, (60, 80))) for i in range(90)]


@pytest.mark.slow
def test_check_html_shows_every_thumbnail_and_asks_for_nothing_outside(photos, browser, tmp_path):
    X, y = clustered_codes(30, 3)
    X[1] = X[0] * 1.05  # a near-duplicate pair, one in train, one in test
    y = y.copy()
    y[50] = "0"  # a flip
    split = np.array(["train", "test", "val"] * 30)
    result = analyse(X, y, split, photos, CheckOptions(threshold=0.99))
    files = write_check(result, tmp_path)
    record = json.loads(files["json"].read_text())
    assert record["problems"]["leakage"] == 1
    assert {f["path"] for f in record["near_duplicates"]["groups"][0]["files"]} == {str(photos[0]), str(photos[1])}
    assert record["label_issues"]["suspects"][0]["path"] == str(photos[50])
    widths, outside = open_page(browser, files["html"], tmp_path / "check.png")
    assert outside == []
    assert len(widths) >= 3 and all(w > 0 for w in widths)


@pytest.mark.slow
def test_run_gallery_and_map_load_in_a_browser(photos, browser, tmp_path):
    errors = [{"path": str(photos[i]), "true": "a", "predicted": "b", "probability": 0.7} for i in range(3)]
    errors.append({"path": str(tmp_path / "gone.jpg"), "true": "b", "predicted": "a", "probability": None})
    X, y = clustered_codes(10, 3)
    marked = np.zeros(len(y), dtype=bool)
    marked[:2] = True
    png = plot_codes_map(X, y, marked, tmp_path / "codes_map.png", "test map")
    page_path = write_run_gallery(tmp_path, errors, png, "a run")
    text = page_path.read_text()
    assert "unreadable" in text  # the vanished file has a placeholder, not a broken image
    widths, outside = open_page(browser, page_path)
    assert outside == [] and len(widths) == 4 and all(w > 0 for w in widths)


def test_thumbnail_budget_caps_a_page(photos):
    budget = ThumbnailBudget(left=2)
    cards = [card(p, ["x"], budget) for p in photos[:4]]
    assert [bool(c) for c in cards] == [True, True, False, False] and budget.held_back == 2
    html = error_gallery_html([{"path": str(p), "true": "a", "predicted": "b", "probability": 0.5}
                               for p in photos[:10]], ThumbnailBudget(), limit=4)
    assert html.count("<img") == 4 and "10 misclassified" in html and str(MAX_THUMBNAILS) in html


# ---- end to end through the real backbone ---------------------------------------------------------------

@pytest.fixture(scope="module")
def colours(sample_images, tmp_path_factory):
    """Two classes of distinct photos: 9 non-overlapping crops of each of scikit-learn's two sample photos,
    and one planted near-duplicate (a crop 10% brighter, saved again under its class)."""
    import cv2

    root = tmp_path_factory.mktemp("crops") / "crops"
    for name in ("china", "flower"):
        img = cv2.imread(str(sample_images[name]))
        h, w = img.shape[0] // 3, img.shape[1] // 3
        for r in range(3):
            for c in range(3):
                cv2.imwrite(str((root / name).joinpath(f"{name}{r}{c}.jpg")) if (root / name).mkdir(
                    parents=True, exist_ok=True) is None else "", img[r * h:(r + 1) * h, c * w:(c + 1) * w])
    crop = cv2.imread(str(root / "china" / "china11.jpg")).astype(np.float32)
    cv2.imwrite(str(root / "china" / "china11_bright.jpg"), np.clip(crop * 1.1, 0, 255).astype(np.uint8),
                [cv2.IMWRITE_JPEG_QUALITY, 80])  # brightness +10%, saved again
    return root


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
def test_check_cli_writes_json_and_html_and_fails_on_request(colours, shared_cache, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["check", str(colours), "--cache", str(shared_cache), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "near-duplicates:" in text and "suspected label errors" in text
    record = json.loads((out / "check.json").read_text())
    assert record["images"] == 19 and set(record["counts"]) == {"china", "flower"}
    assert sum(sum(v.values()) for v in record["counts"].values()) == 19
    groups = [{f["path"] for f in g["files"]} for g in record["near_duplicates"]["groups"]]
    planted = {str(colours / "china" / "china11.jpg"), str(colours / "china" / "china11_bright.jpg")}
    assert planted in groups  # the copy is found, and no other crop joins it (crops of blurred background
    # in flower.jpg do look alike; the synthetic test above checks that distinct codes stay apart)
    assert (out / "check.html").stat().st_size > 1000
    # a threshold every pair passes: near-duplicates are found, so --fail-on near-duplicates exits 1
    assert main(["check", str(colours), "--cache", str(shared_cache), "--out", str(out),
                 "--threshold", "0.0001", "--fail-on", "near-duplicates"]) == 1
    assert "check failed on near-duplicates" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["check", str(colours), "--fail-on", "typos"])


@pytest.mark.slow
def test_fit_head_records_near_duplicates_and_can_keep_them_together(colours, shared_cache, browser, tmp_path):
    from featx.training import fit_head

    plain = fit_head(colours, cache_dir=shared_cache, out_dir=tmp_path / "plain")
    nd = plain.metrics["near_duplicates"]
    assert nd["mode"] == "report" and nd["groups"] >= 1
    assert set(nd) >= {"straddling_groups", "leaked_test_images", "test_accuracy", "test_accuracy_without_leaked",
                       "top_pairs"}
    assert json.loads((plain.out_dir / "metrics.json").read_text())["near_duplicates"] == json.loads(json.dumps(nd))
    assert (plain.out_dir / "gallery.html").is_file() and (plain.out_dir / "codes_map.png").is_file()
    errors = json.loads((plain.out_dir / "errors.json").read_text())
    assert len(errors) == round((1 - plain.metrics["accuracy"]["test"]) * plain.metrics["n"]["test"])
    from featx.report import write_report

    page_path = write_report(shared_cache / "runs.csv", tmp_path / "report", html=True)["html"]
    text = page_path.read_text()
    assert "Map of the codes" in text and "Misclassified held-out images" in text
    widths, outside = open_page(browser, page_path)
    assert outside == [] and all(w > 0 for w in widths) and len(widths) >= 3 + len(errors)
    grouped = fit_head(colours, cache_dir=shared_cache, out_dir=tmp_path / "grouped", near_duplicates="group")
    g = grouped.metrics["near_duplicates"]
    assert g["mode"] == "group" and g["groups"] == nd["groups"]
    assert g["straddling_groups"] == 0 and g["leaked_test_images"] == 0
    assert grouped.metrics["split_id"] != plain.metrics["split_id"]
    with pytest.raises(FeatxError, match="near_duplicates"):
        fit_head(colours, cache_dir=shared_cache, near_duplicates="sometimes")


def test_a_file_name_with_undecodable_bytes_is_shown_escaped(tmp_path):
    import os

    raw = os.path.join(os.fsencode(tmp_path), b"bad\xffname.jpg")
    write_image(tmp_path / "good.jpg", make_photo(3))
    with open(raw, "wb") as f:
        f.write((tmp_path / "good.jpg").read_bytes())
    errors = [{"path": os.fsdecode(raw), "true": "a", "predicted": "b", "probability": 0.9}]
    page_path = write_run_gallery(tmp_path, errors, None, "run")
    text = page_path.read_text(encoding="utf-8")
    assert "bad\\xffname.jpg" in text and "data:image/jpeg;base64," in text
    assert json.loads((tmp_path / "errors.json").read_text())[0]["path"] == os.fsdecode(raw)



def test_a_small_clean_set_has_no_suspected_label_errors():
    """A new user's check flagged 13 of 52 correctly labelled leaves (and 52 of 77 birds): on a small set the
    former head (PCA to as many components as training rows, then standardised) blew up noise. Codes like a
    CNN's (non-negative, 1,280-d), 52 images in 3 well separated classes, every label right: nothing flagged."""
    rng = np.random.default_rng(0)
    sizes = (18, 17, 17)
    means = rng.normal(size=(3, 1280)) * 0.5
    X = np.maximum(means[np.repeat([0, 1, 2], sizes)] + rng.normal(size=(sum(sizes), 1280)), 0).astype(np.float32)
    y = np.repeat(np.array(["a", "b", "c"]), sizes)
    issues = label_issues(X, y)
    assert int(issues.flagged.sum()) == 0
    assert (issues.suggested == y).mean() >= 0.95


@pytest.mark.parametrize("argv, expected", [
    (["--threshold", "2"], "expected a cosine similarity in (0, 1], got '2'"),
    (["--fail-on", "leak"], "unknown kind 'leak' (did you mean 'leakage'?); choose from leakage,"),
])
def test_check_usage_errors_say_what_is_allowed(tmp_path, capsys, argv, expected):
    """A new user saw "expected a number, got '2'" and "invalid --fail-on value value: 'leak'"."""
    with pytest.raises(SystemExit) as exit_:
        main(["check", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
