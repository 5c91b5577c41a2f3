"""The console report of a fit-head run, made from its metrics alone (what ``metrics.json`` holds)."""

from __future__ import annotations

from featx.stats import describe_accuracy
from featx.names import shown


def flip_not_used(m: dict) -> str:
    """Why a search offered flip TTA chose a head without it: outscored, or never scored (budget)."""
    if (m.get("cv") or {}).get("flip_scored", 1):
        return " (flip TTA was a candidate; the chosen one does not use it)"
    return " (flip TTA candidates were skipped: the time budget was spent; see selection.csv)"


def chosen_text(chosen) -> str:
    """``C 0.1`` for one head's choice; ``C 0.1 / C 1`` for one head per block (--fuse mean, flip TTA)."""
    if isinstance(chosen, dict):
        return ", ".join(f"{k} {v}" for k, v in chosen.items())
    return " / ".join(", ".join(f"{k} {v}" for k, v in c.items()) or "-" for c in chosen)


def headline(m: dict) -> str:
    """``dataset: backbone/taps -> head head ... (split id: counts)``."""
    return (
        f"{m['dataset']}: {m['backbone']}/{'+'.join(m['taps'])} -> {m['head']} head"
        f"{' on ' + str(m['views']) + ' augmented views too' if m.get('views') else ''}"
        f"{' (' + m['fuse'] + ' of one head per backbone)' if m.get('fuse') == 'mean' and len(m['backbones']) > 1 else ''}"
        f"{' with flip TTA' if m.get('tta_used', m.get('tta')) == 'flip' else ''}"
        f"{flip_not_used(m) if m.get('tta_used') == 'none' and m.get('tta') == 'flip' else ''} "
        f"(split {m['split_id']}: {m['n']['train']} train, {m['n']['val']} val, {m['n']['test']} test)"
    )


def validation_text(m: dict) -> str:
    """``held-out validation accuracy 0.812 [0.570, 0.934] (n=16) (before refit)`` or ``cross-validated
    accuracy 0.833 [0.733, 0.900] (n=78), ± 0.041 over 3 folds``: metrics' ``validation`` figure, as the
    report and the runs log give it (:func:`featx.stats.describe_accuracy`); '' without one."""
    v = m.get("validation")
    if not v or m["evaluated_on"] != "test":
        return ""
    text = describe_accuracy(v)
    if v["kind"] == "cv" and "cv" in m:
        return f"{text}, ± {m['cv']['sd']:.3f} over 3 folds"
    return text + (" (before refit)" if m["refit"] and v["kind"] == "val" else "")


def accuracy_lines(m: dict, summary: dict) -> list[str]:
    """The held-out accuracy with its interval, then the train and validation figures."""
    train = m["accuracy"]["train"]
    validation = validation_text(m)
    return [
        f"{m['evaluated_on']} accuracy {summary['text']}  95% Wilson interval",
        f"train {'-' if train is None else f'{train:.3f}'}" + (f"  {validation}" if validation else ""),
    ] + missing_class_lines(m)


def missing_class_lines(m: dict) -> list[str]:
    """A warning naming the classes with no image in the evaluated split (their names escaped: featx.names)."""
    if not m.get("classes_not_evaluated"):
        return []
    names = ", ".join(f"'{shown(c)}'" for c in m["classes_not_evaluated"])
    return [f"warning: no {m['evaluated_on']} image of class(es) {names}: no accuracy for them; the "
            f"{m['evaluated_on']} accuracy covers the other classes only"]


def per_class_lines(m: dict) -> list[str]:
    """Precision, recall and support per class on the evaluated split."""
    if not m["per_class"]:
        return []
    lines = [f"  {'per class (' + m['evaluated_on'] + ')':<24} {'precision':>9} {'recall':>7} {'support':>8}"]
    for c, r in m["per_class"].items():
        lines.append(f"  {shown(c)[:24]:<24} {r['precision']:9.3f} {r['recall']:7.3f} {r['support']:8d}")
    return lines


def fit_report_text(m: dict, summary: dict, selection=None) -> str:
    """The whole console report; ``selection`` (auto) adds the candidates' table first."""
    fit_rows = m["n_fit"]["train"] + m["n_fit"]["val"]
    refit = (f"final model trained on train+val ({fit_rows} images)" if m["refit"]
             else f"final model trained on train only ({fit_rows} images; --no-refit)")
    chosen = chosen_text(m["chosen"])
    lines = [headline(m), f"{refit}{'; chosen: ' + chosen if chosen else ''}", *accuracy_lines(m, summary)]
    if summary["warning"]:
        lines.append(summary["warning"])
    lines.append(f"fit {m['fit_seconds']:.2f}s (codes ready in {m['extract_seconds']:.1f}s)")
    lines += per_class_lines(m)
    text = "\n".join(lines)
    if selection is not None:
        text = f"selection ({selection.seconds:.0f}s, {m['cv']['rows']} images, " \
               f"{len(selection.table)} candidates; saved to selection.csv):\n{selection.text()}\n" + text
    return text
