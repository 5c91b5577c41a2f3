"""A training run's outputs, written one way for every route: folder, metrics.json, runs-log row, featx.json, plots.

Why one module: the cached route (``fit-head``), fine-tuning and the from-scratch baselines each used to
spell their default folder, build their runs-log row and write ``metrics.json`` themselves, and drifted
apart. :class:`RunOutputs` owns all of it; :data:`METRICS_SCHEMA` is the one description of
``metrics.json``, checked by :func:`check_metrics` on every write; :class:`RunResult` is what every route
returns.

Output folder: ``--out DIR`` when given, else ``featx-out/<dataset>-<what ran>`` in the working directory
(:data:`DEFAULT_OUT_ROOT`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from featx.atomic import Together, whole
from featx.modelcheck import sign_model
from featx.modelmeta import ModelDescription
from featx.runs import append_run, plot_confusion, plot_curves, runs_log_path
from featx.vocabulary import SPLITS

#: Where runs write when no ``out_dir`` is given (relative to the working directory).
DEFAULT_OUT_ROOT = Path("featx-out")

#: The training routes, as the runs log and the report name them.
ROUTES = ("cached", "finetune", "baseline")

#: Keys every route writes into ``metrics.json`` (route-specific keys follow them; see ROUTE_METRICS).
METRICS_SCHEMA = {
    "dataset": "str: the dataset folder's name",
    "route": "str: cached | finetune | baseline",
    "backbone": "str: the network that made the codes or was trained ('a+b' for fused backbones; a baseline's "
                "architecture)",
    "taps": "list of str: the taps the head reads (empty for a baseline)",
    "split_id": "str: the stored split (cache/splits/<split_id>.json)",
    "n": "{train, val, test}: images in each split",
    "accuracy": "{train, val, test}: float in [0, 1] or null (no image in that split)",
    "evaluated_on": "str: 'test', or 'val' when the split has no test image",
    "<evaluated_on>": "{accuracy, correct, n, interval95, smallest_class, classes_missing, warning}: the held-out "
                      "figure (featx.stats.accuracy_summary; smallest_class counts every class of the model, 0 when "
                      "one has no image there) -- absent when that split is empty",
    "classes_not_evaluated": "list of str: classes of the model with no image in the evaluated split (no accuracy "
                             "for them; the overall accuracy covers the other classes only); empty when every class "
                             "was evaluated",
}

#: The documented route-specific keys (each route may write these beside METRICS_SCHEMA's).
ROUTE_METRICS = {
    "cached": ("backbones", "head", "pooling", "views", "tta", "fuse", "recipe", "tta_used", "refit", "n_fit",
               "chosen", "val_note", "per_class", "fit_seconds", "extract_seconds", "skipped_images", "leakage",
               "label_conflicts", "cv", "validation", "near_duplicates"),
    "finetune": ("tap", "unfreeze", "recipe", "settings", "augmentation", "trainable_layers",
                 "val_carved_from_train", "accuracy_text", "epochs_run", "warmup_steps", "warm_start_val_accuracy",
                 "kept_warm_start", "train_seconds", "total_seconds", "interrupted", "init_head", "validation"),
    "baseline": ("arch", "size", "accuracy_text", "epochs_run", "train_seconds", "total_seconds", "params",
                 "validation"),
}


def check_metrics(metrics: dict) -> dict:
    """``metrics`` when it holds every key of :data:`METRICS_SCHEMA` with the right shape, else ValueError.

    Raises
    ------
    ValueError
        A missing key, an unknown route, or ``n``/``accuracy`` without one entry per split. A programming
        error, not a user's: the message names the key.
    """
    missing = [k for k in METRICS_SCHEMA if not k.startswith("<") and k not in metrics]
    if missing:
        raise ValueError(f"metrics.json lacks {', '.join(missing)}")
    if metrics["route"] not in ROUTES:
        raise ValueError(f"metrics.json route must be one of {', '.join(ROUTES)}, got {metrics['route']!r}")
    for key in ("n", "accuracy"):
        if set(metrics[key]) != set(SPLITS):
            raise ValueError(f"metrics.json {key} must have one entry per split ({', '.join(SPLITS)})")
    if metrics["evaluated_on"] not in ("test", "val"):
        raise ValueError(f"metrics.json evaluated_on must be test or val, got {metrics['evaluated_on']!r}")
    return metrics


@dataclass(repr=False)
class RunResult(Mapping):
    """What every training route returns.

    ``model``: the saved model (``model.featx`` for fit-head, ``model.keras`` for finetune and baseline);
    ``metrics``: as written to ``metrics.json``; ``out_dir``: the run's folder; ``report``: the console text;
    ``selection``: ``--head auto``'s :class:`featx.selection.SelectionResult` (else None).

    It is also a read-only mapping of ``model``, ``metrics`` and ``out_dir`` (``result["metrics"]``,
    ``"metrics" in result``, ``result.keys()``, ``result.get(...)``, ``dict(result)``), as the former dict
    results of finetune and train_baseline were; ``result["report"]`` and ``result["selection"]`` work too.
    """

    model: Path
    metrics: dict
    out_dir: Path
    report: str = ""
    selection: object = None

    @property
    def bundle(self) -> Path:
        """The saved model's path (a fit-head run's ``model.featx``)."""
        return self.model

    def __repr__(self) -> str:
        m = self.metrics or {}
        test = m.get("test") if isinstance(m.get("test"), dict) else None
        acc = f", test {test['accuracy']:.3f} (n={test['n']})" if test and "accuracy" in test and "n" in test else ""
        what = "/".join(str(m[k]) for k in ("dataset", "backbone", "head") if m.get(k))
        return f"RunResult({what}{acc}, model={str(self.model)!r})"

    def __getitem__(self, key: str):
        if key not in ("model", "metrics", "out_dir", "report", "selection"):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(("model", "metrics", "out_dir"))

    def __len__(self) -> int:
        return 3


@dataclass(frozen=True)
class RunOutputs:
    """Where and how one run writes.

    Parameters
    ----------
    dataset : str
        The dataset folder's name (first part of the default folder name, and the runs log's ``dataset``).
    route : {"cached", "finetune", "baseline"}
    name : str
        What ran, for the default folder ``featx-out/<dataset>-<name>``.
    out_dir : path, optional
        The folder the user chose (overrides the default).
    cache_dir : path, optional
        The cache folder whose ``runs.csv`` gets the run's row (no row when None).
    staging : featx.atomic.Together, optional
        Files are written under temporary names and appear together when its block ends (or none does);
        without it each file appears whole on its own.  ``RunOutputs.together()`` gives one.
    """

    dataset: str
    route: str
    name: str
    out_dir: Path | None = None
    cache_dir: Path | None = None
    staging: Together | None = None

    def together(self) -> tuple["RunOutputs", Together]:
        """These outputs writing into a new :class:`~featx.atomic.Together` (use it as a ``with`` block)."""
        staging = Together()
        return replace(self, staging=staging), staging

    @contextlib.contextmanager
    def file(self, name: str):
        """A path to write the output ``name`` to: it appears whole (or with the others, when staged)."""
        final = self.prepare() / name
        if self.staging is not None:
            yield self.staging.path(final)
        else:
            with whole(final) as tmp:
                yield tmp

    @property
    def folder(self) -> Path:
        return Path(self.out_dir) if self.out_dir else DEFAULT_OUT_ROOT / f"{self.dataset}-{self.name}"

    def prepare(self) -> Path:
        """Create the folder (and its parents); returns it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder

    def write_metrics(self, metrics: dict) -> Path:
        """``metrics.json`` (indented; paths and other objects as text), checked against the schema first."""
        check_metrics(metrics)
        with self.file("metrics.json") as tmp:
            tmp.write_text(json.dumps(metrics, indent=2, default=str))
        return self.folder / "metrics.json"

    def write_description(self, description: ModelDescription) -> Path:
        """``featx.json`` beside the run's ``model.keras``."""
        path = description.write(self.prepare())
        if (self.folder / "model.keras").is_file():  # signed like a bundle: predict and serve check it
            sign_model(self.folder / "model.keras")
        return path

    def log_run(self, metrics: dict, *, head: str, output, extract_s: float, fit_s: float) -> None:
        """One row of the runs log (``cache_dir/runs.csv``), built from the checked ``metrics``."""
        if self.cache_dir is None:
            return
        append_run(runs_log_path(self.cache_dir), {
            "dataset": metrics["dataset"], "route": self.route, "backbone": metrics["backbone"],
            "taps": "+".join(metrics["taps"]), "head": head, "split_id": metrics["split_id"],
            **{f"n_{s}": metrics["n"][s] for s in SPLITS}, **{f"{s}_acc": metrics["accuracy"][s] for s in SPLITS},
            "extract_s": extract_s, "fit_s": fit_s, "output": str(output),
            **({"val_kind": metrics["validation"]["kind"], "val_n": metrics["validation"]["n"]}
               if metrics.get("validation") else {}),
        })

    def plot_curves(self, history: dict, title: str) -> Path | None:
        """``curves.png`` (accuracy and loss per epoch) when at least one epoch ran."""
        if not history.get("loss"):
            return None
        with self.file("curves.png") as tmp:
            plot_curves(history, tmp, title)
        return self.folder / "curves.png"

    def plot_confusion(self, y_true, y_pred, class_names, title: str) -> Path | None:
        """``confusion.png`` when there is at least one evaluated image."""
        if not len(y_true):
            return None
        with self.file("confusion.png") as tmp:
            plot_confusion(y_true, y_pred, class_names, tmp, title)
        return self.folder / "confusion.png"
