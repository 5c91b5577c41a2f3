"""Pages that show the images: thumbnails embedded as data URIs, a run's error gallery, the map of the codes.

Why here: ``featx check``'s page (:mod:`featx.check`), fit-head's ``gallery.html`` (:mod:`featx.training.fit`)
and ``report --html`` (:mod:`featx.report`) all show photos the same way; this module is that way. Every page
is self-contained (no external URL, no script) and bounded: at most :data:`MAX_THUMBNAILS` thumbnails a page,
each at most :data:`THUMBNAIL_SIDE` pixels on its longer side, JPEG quality :data:`THUMBNAIL_QUALITY` (about
3-6 kB each, so the thumbnails of one page stay under about 1.5 MB).

A run's files: ``errors.json`` (the misclassified held-out images: path, true and predicted label, the
probability of the prediction), ``codes_map.png`` (t-SNE of the codes, one dot per image coloured by class,
held-out errors marked) and ``gallery.html`` (both, as one page).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx.errors import FeatxError
from featx.images import load_image
from featx.names import shown
from featx.quality import one_thread
from featx.runs import pyplot

#: Longer side of a thumbnail, pixels.
THUMBNAIL_SIDE = 112

#: JPEG quality of a thumbnail (75: the usual web default).
THUMBNAIL_QUALITY = 75

#: Thumbnails on one page at most; more are counted and named in the page's JSON, not shown.
MAX_THUMBNAILS = 300

#: Misclassified images a run's gallery shows at most (report --html shows this many per run too).
MAX_ERRORS_SHOWN = 48

#: Confused pairs a run's gallery shows (the thumbnails are shared among them).
PAIRS_SHOWN = 6

#: Points of the codes map at most: t-SNE is O(n log n) but slow in Python beyond a few thousand points
#: (2,000 points: about 10 s on two cores). Every held-out error is kept; the rest is a seeded sample.
MAP_MAX_POINTS = 2000

#: Fewer images than this are mapped by PCA (two components), not t-SNE.
MAP_TSNE_MIN = 200

#: A decoded image larger than this many pixels is refused for a thumbnail (featx.images' bound for a photo).
THUMBNAIL_MAX_PIXELS = 64_000_000

#: Styles of the thumbnails, groups and map (report --html adds them to its own).
CARD_CSS = """
.strip{display:flex;flex-wrap:wrap;gap:.5rem;margin:.4rem 0 1rem}
.card{width:124px;margin:0;font-size:11px;line-height:1.3;overflow-wrap:anywhere}
.card img,.card .missing{display:block;width:112px;height:112px;object-fit:contain;background:#f3f3f3;
border:1px solid #ddd;border-radius:3px}
.card .missing{display:flex;align-items:center;justify-content:center;color:#999}
.card figcaption{margin-top:2px;color:#333}.card .file{color:#777}
.groups{display:flex;flex-wrap:wrap;gap:.6rem;align-items:flex-start}
.group{border:1px solid #e4e4e4;border-radius:4px;padding:.3rem .6rem;margin:0;max-width:100%}
.group .strip{margin:.3rem 0 .2rem}.group .head{font-size:12px}
.badge{display:inline-block;padding:0 .4em;border-radius:3px;font-size:11px;margin-left:.4em}
.leak{background:#fde2c8;color:#843}.conflict{background:#f8d0d0;color:#822}
img.map{max-width:100%;height:auto;border:1px solid #eee}
"""

#: featx's page look (text, headings, tables, notes), shared by every page it writes (report, gallery, check).
PAGE_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}h3{font-size:1rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;
vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555;font-size:.9em}.warn{color:#a40}
"""

#: A whole page's styles: the look, and the cards.
CSS = PAGE_CSS + CARD_CSS


@dataclass
class ThumbnailBudget:
    """How many thumbnails a page may still embed (shared by every section of one page)."""

    left: int = MAX_THUMBNAILS
    shown: int = 0
    held_back: int = 0
    cache: dict = field(default_factory=dict)

    def take(self) -> bool:
        if self.left <= 0:
            self.held_back += 1
            return False
        self.left -= 1
        self.shown += 1
        return True


def thumbnail_uri(path, side: int = THUMBNAIL_SIDE, quality: int = THUMBNAIL_QUALITY) -> str | None:
    """The image at ``path`` as a ``data:image/jpeg;base64,...`` thumbnail (longer side ``side`` px), or None
    when it cannot be read (a file removed or damaged since; the page shows a placeholder)."""
    import cv2

    try:
        img = load_image(path, max_pixels=THUMBNAIL_MAX_PIXELS)
    except (FeatxError, OSError, ValueError):
        return None
    h, w = img.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale < 1:
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii") if ok else None


def card(path, lines, budget: ThumbnailBudget, title: str | None = None) -> str:
    """One thumbnail with its caption lines (each escaped), or nothing when the page's budget is spent."""
    if not budget.take():
        return ""

    def e(text):
        return html.escape(shown(text))  # featx.names' one escape for undecodable bytes

    key = str(path)
    if key not in budget.cache:
        budget.cache[key] = thumbnail_uri(path)
    uri = budget.cache[key]
    name = Path(key).name
    picture = (f'<img src="{uri}" alt="{e(name)}" loading="lazy">' if uri
               else '<div class="missing" role="img" aria-label="unreadable">unreadable</div>')
    caption = "".join(f"<div>{e(str(line))}</div>" for line in lines)
    return (f'<figure class="card" title="{e(title or key)}">{picture}<figcaption>{caption}'
            f'<div class="file">{e(name)}</div></figcaption></figure>')


def page(title: str, body: list[str]) -> str:
    """A whole self-contained HTML document (UTF-8, no script, no external URL)."""
    return "\n".join(["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      f"<title>{html.escape(shown(title))}</title>", f"<style>{CSS}</style></head><body>",
                      *body, "</body></html>"])


def png_uri(path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


# ---- a run's errors and its map of the codes ---------------------------------------------------------

def error_records(paths, y_true, y_pred, probability=None) -> list[dict]:
    """The misclassified rows as ``{"path", "true", "predicted", "probability"}`` (probability of the predicted
    class, or None), most confident mistakes first."""
    y_true, y_pred = np.asarray(y_true).astype(str), np.asarray(y_pred).astype(str)
    prob = np.asarray(probability, dtype=float) if probability is not None else np.full(len(y_true), np.nan)
    wrong = np.flatnonzero(y_true != y_pred)
    wrong = wrong[np.argsort(-np.nan_to_num(prob[wrong], nan=0.0), kind="stable")]
    return [{"path": str(paths[i]), "true": y_true[i], "predicted": y_pred[i],
             "probability": None if np.isnan(prob[i]) else round(float(prob[i]), 4)} for i in wrong]


def error_gallery_html(errors: list[dict], budget: ThumbnailBudget, limit: int = MAX_ERRORS_SHOWN,
                       heading: str = "h3") -> str:
    """The misclassified images grouped by confused pair (most errors first), each with true, predicted and
    probability; at most ``limit`` thumbnails (and the page's budget), shared among the first
    :data:`PAIRS_SHOWN` pairs so that the second and third pairs are seen too (the most confident mistakes of
    each pair first)."""
    e = html.escape
    if not errors:
        return '<p class="note">No misclassified held-out image.</p>'
    pairs: dict[tuple, list] = {}
    for rec in errors:
        pairs.setdefault(tuple(sorted((rec["true"], rec["predicted"]))), []).append(rec)
    ordered = sorted(pairs.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:PAIRS_SHOWN]
    per_pair = _shares([len(recs) for _, recs in ordered], limit)
    out, n_shown = [], 0
    for ((a, b), recs), share in zip(ordered, per_pair):
        cards = []
        for rec in recs[:share]:
            p = rec["probability"]
            cards.append(card(rec["path"], [f"true: {rec['true']}", f"predicted: {rec['predicted']}"
                                             + (f" ({p:.2f})" if p is not None else "")], budget))
        cards = [c for c in cards if c]
        n_shown += len(cards)
        if cards:
            some = f", the {len(cards)} most confident shown" if len(cards) < len(recs) else ""
            out.append(f"<{heading}>{e(a)} &harr; {e(b)}: {len(recs)} error(s){some}</{heading}>"
                       f'<div class="strip">{"".join(cards)}</div>')
    if len(errors) > n_shown or budget.held_back:
        out.append(f'<p class="note">{len(errors)} misclassified image(s); thumbnails of {n_shown} shown '
                   f"(at most {limit} per run, {MAX_THUMBNAILS} per page); every one is in errors.json.</p>")
    return "\n".join(out)


def _shares(sizes: list[int], limit: int) -> list[int]:
    """Split ``limit`` thumbnails among groups of these sizes: equal shares, what a small group leaves unused
    going to the larger ones (water-filling)."""
    shares = [0] * len(sizes)
    left = limit
    while left > 0 and any(s < n for s, n in zip(shares, sizes)):
        open_ = [i for i, (s, n) in enumerate(zip(shares, sizes)) if s < n]
        each = max(1, left // len(open_))
        for i in open_:
            give = min(each, sizes[i] - shares[i], left)
            shares[i] += give
            left -= give
    return shares


def map_sample(n: int, keep, limit: int = MAP_MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Row indices for the map: every row of ``keep`` (bool (n,)) and a seeded sample of the rest, at most
    ``limit`` in all (``keep`` rows first if they alone exceed it), sorted."""
    keep = np.asarray(keep, dtype=bool)
    if n <= limit:
        return np.arange(n)
    must = np.flatnonzero(keep)[:limit]
    rest = np.flatnonzero(~keep)
    extra = np.random.default_rng(seed).choice(rest, size=max(0, limit - len(must)), replace=False)
    return np.sort(np.concatenate([must, extra]))


def plot_codes_map(X, y, marked, path, title: str, seed: int = 0) -> Path:
    """A 2-D t-SNE embedding of the codes as a PNG: one dot per image coloured by class, ``marked`` rows (the
    held-out errors) drawn as black-edged crosses.

    Parameters
    ----------
    X : array (n, d)
        Codes (L2-normalised, reduced to 50 dimensions by PCA first, as van der Maaten & Hinton advise).
    y : array (n,)
        Class names.
    marked : array (n,) bool
    path : path of the PNG (written, returned)
    seed : int
        t-SNE's and the sample's seed.

    Notes
    -----
    At most :data:`MAP_MAX_POINTS` points (:func:`map_sample`); t-SNE's perplexity 30 (its default). Below
    :data:`MAP_TSNE_MIN` images the map is the first two principal components instead (t-SNE on a few dozen
    points shows little and costs a second).
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    X = np.asarray(X, dtype=np.float32)
    y, marked = np.asarray(y).astype(str), np.asarray(marked, dtype=bool)
    rows = map_sample(len(X), marked, seed=seed)
    X, y, marked = X[rows], y[rows], marked[rows]
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    if X.shape[1] > 50 and len(X) > 50:
        with one_thread():
            X = PCA(50, random_state=seed).fit_transform(X)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.6, 6.0))
    method = "t-SNE" if len(X) >= MAP_TSNE_MIN else "PCA"
    if len(X) >= 3:
        with one_thread():
            Z = TSNE(2, perplexity=min(30.0, (len(X) - 1) / 3), init="pca", random_state=seed).fit_transform(X) \
                if method == "t-SNE" else PCA(2, random_state=seed).fit_transform(X)
        classes = sorted(set(y.tolist()))
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for c_i, c in enumerate(classes):
            m = y == c
            ax.scatter(Z[m, 0], Z[m, 1], s=9, color=cmap(c_i % cmap.N), alpha=0.75, label=shown(c), linewidths=0)
        if marked.any():  # coloured by the true label; the legend's proxy is white, as the colour varies
            ax.scatter(Z[marked, 0], Z[marked, 1], s=40, marker="X", c=[cmap(classes.index(c) % cmap.N)
                                                                        for c in y[marked]],
                       edgecolors="black", linewidths=0.8)
            ax.scatter([], [], s=40, marker="X", c="white", edgecolors="black", linewidths=0.8,
                       label="misclassified\n(held out; colour:\ntrue label)")
        # outside the axes: inside, "best" still covered dense maps
        ax.legend(fontsize=8, markerscale=1.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.text(0.5, 0.5, f"{len(X)} image(s): too few for a map", ha="center", va="center")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(shown(f"{title} ({method}, {len(X)} images)"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_run_gallery(folder, errors: list[dict], map_png: Path | None, title: str) -> Path:
    """``errors.json`` and ``gallery.html`` (the error gallery and the codes map) in a run's ``folder``."""
    folder = Path(folder)
    (folder / "errors.json").write_text(json.dumps(errors, indent=1, ensure_ascii=True))
    budget = ThumbnailBudget()
    body = [f"<h1>{html.escape(shown(title))}</h1>", "<h2>Misclassified held-out images</h2>",
            error_gallery_html(errors, budget)]
    if map_png is not None and Path(map_png).is_file():
        body += ["<h2>Map of the codes</h2>", codes_map_html(map_png)]
    path = folder / "gallery.html"
    path.write_text(page(title, body), encoding="utf-8", errors="backslashreplace")
    return path


def codes_map_html(map_png) -> str:
    return (f'<figure><img class="map" src="{png_uri(map_png)}" alt="t-SNE map of the codes">'
            '<figcaption class="note">A 2-D map of the codes (t-SNE; PCA for small sets), one dot per image coloured '
            "by its label; crosses: held-out images the head gets wrong, coloured by their true label. Distances "
            "between far clusters mean little in t-SNE.</figcaption>"
            "</figure>")


def run_section(folder, budget: ThumbnailBudget, limit: int = MAX_ERRORS_SHOWN) -> str:
    """A run's error gallery and codes map as HTML for ``report --html`` (empty when the run wrote neither)."""
    folder = Path(folder)
    out = []
    try:
        errors = json.loads((folder / "errors.json").read_text())
    except (OSError, ValueError):
        errors = None
    if isinstance(errors, list) and all(isinstance(r, dict) and {"path", "true", "predicted"} <= set(r)
                                        for r in errors):
        for rec in errors:
            rec.setdefault("probability", None)
        out.append('<div class="gallery"><h4>Misclassified held-out images</h4>'
                   + error_gallery_html(errors, budget, limit, heading="h5") + "</div>")
    if (folder / "codes_map.png").is_file():
        out.append('<div class="codes-map"><h4>Map of the codes</h4>' + codes_map_html(folder / "codes_map.png")
                   + "</div>")
    return "\n".join(out)
