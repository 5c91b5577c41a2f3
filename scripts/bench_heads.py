"""Benchmark: every head on cached codes, the study's dense head, --head auto, and fusion + flip TTA.

For each dataset (same stored split as ``featx fit-head``; test images are used once per model):

* each single featx head on the first backbone's ``pre_logits`` (refit on train+val, as fit-head does);
* the study's dense head as a plain Keras script on the raw codes (Dense(1024, relu) -> Dropout(0.5) ->
  softmax, RMSprop 1e-3, batch 32, 20 epochs, trained on train+val), mean over ``--seeds`` seeds;
* ``--head auto`` on the first backbone (taps: stage5 + pre_logits), and auto with two backbones and
  flip TTA (``fit_head(..., head="auto", backbone="a,b", tta="flip")``);
* ``advise``'s recommended tap (LogME + CV probe on train+val) against the best tap of a sweep
  (logistic head per tap, fit on train, scored on test).

Prints one table per dataset and the ratios the issue's goals are stated in; writes a CSV.
The machine may be shared: seconds are noisy, accuracies are not.

    PYTHONPATH=. python scripts/bench_heads.py --cache /tmp/i16/cache \
        /work/shared/datasets/ants_bees /work/shared/datasets/cifar10_3k /work/shared/datasets/flowers5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def study_dense(Xtr, ytr, Xte, yte, seed):
    """The study's head, written out in plain Keras (not featx's DenseHead)."""
    import keras

    classes, yi = np.unique(ytr, return_inverse=True)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((Xtr.shape[1],)),
        keras.layers.Dense(1024, activation="relu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(len(classes), activation="softmax"),
    ])
    model.compile(keras.optimizers.RMSprop(1e-3), "sparse_categorical_crossentropy")
    model.fit(Xtr, yi, epochs=20, batch_size=32, verbose=0)
    pred = classes[model.predict(Xte, verbose=0).argmax(axis=1)]
    return float((pred == yte).mean())


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="+")
    ap.add_argument("--cache", required=True)
    ap.add_argument("--backbones", default="mobilenet_v2,efficientnet_lite0")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=None, help="auto's budget (default featx's)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: heads,dense,study,auto,fused,advise")
    ap.add_argument("--out", default="featx-out/bench_heads.csv")
    args = ap.parse_args()
    import pandas as pd

    from featx.advise import measure_taps
    from featx.training import fit_head, labelled_codes
    from featx.heads import HEADS, Head
    from featx.stats import format_accuracy

    skip = set(args.skip.split(","))
    backbones = args.backbones.split(",")
    rows = []
    for data in args.data:
        name = Path(data).name
        codes = labelled_codes(data, backbones[0], ["stage1", "stage2", "stage3", "stage4", "stage5", "pre_logits"],
                               cache_dir=args.cache, progress=False)
        split, y = codes.split, codes.y
        test = split == "test" if (split == "test").any() else split == "val"
        train, val = split == "train", (split == "val") & ~test
        X = codes.features.codes["pre_logits"]
        n_test = int(test.sum())

        def record(label, acc, seconds, kind):
            correct = acc * n_test
            # a mean over seeds is no count of correct images: no interval, and not rounded to one
            shown = (format_accuracy(int(round(correct)), n_test) if abs(correct - round(correct)) < 1e-6
                     else f"{acc:.3f} (mean; n={n_test})")
            rows.append({"dataset": name, "model": label, "kind": kind, "test_acc": acc, "seconds": seconds,
                         "interval": shown})
            print(f"{name:12s} {label:48s} {shown:34s} {seconds:7.1f}s", flush=True)

        def featx_head(kind, seed=0):
            h = Head(kind, random_state=seed).fit(X[train], y[train],
                                                   validation_data=(X[val], y[val]) if val.any() else None)
            final = h.frozen().fit(X[train | val], y[train | val]) if val.any() else h  # fit-head's refit
            return final.score(X[test], y[test])

        if "heads" not in skip:
            for kind in HEADS:
                if kind != "dense":
                    acc, s = timed(lambda: featx_head(kind))
                    record(f"{backbones[0]} {kind}", acc, s, "single")
        if "dense" not in skip:
            accs, s = timed(lambda: [featx_head("dense", seed) for seed in range(args.seeds)])
            record(f"{backbones[0]} dense (seed 0)", accs[0], s / args.seeds, "single")
            record(f"{backbones[0]} featx dense (mean of {args.seeds} seeds)", float(np.mean(accs)),
                   s / args.seeds, "dense")
        if "study" not in skip:
            accs, s = timed(lambda: [study_dense(X[train | val].astype(np.float32), y[train | val],
                                                 X[test].astype(np.float32), y[test], seed)
                                     for seed in range(args.seeds)])
            record(f"{backbones[0]} study dense (plain Keras, {args.seeds} seeds)", float(np.mean(accs)),
                   s / args.seeds, "study")
        if "auto" not in skip:
            res, s = timed(lambda: fit_head(data, backbones[0], ["stage5", "pre_logits"], head="auto",
                                            cache_dir=args.cache, out_dir=f"featx-out/bench/{name}-auto",
                                            budget=args.budget, progress=False))
            record(f"{backbones[0]} auto [{res.metrics['chosen']['candidate'][:30]}]",
                   res.metrics["accuracy"]["test"] if (split == "test").any() else res.metrics["accuracy"]["val"],
                   s, "auto")
        if "fused" not in skip:
            res, s = timed(lambda: fit_head(data, ",".join(backbones), ["pre_logits"], head="auto", tta="flip",
                                            cache_dir=args.cache, out_dir=f"featx-out/bench/{name}-auto2flip",
                                            budget=args.budget, progress=False))
            record(f"{'+'.join(backbones)} flip auto [{res.metrics['chosen']['candidate'][:22]}]",
                   res.metrics["accuracy"]["test"] if (split == "test").any() else res.metrics["accuracy"]["val"],
                   s, "fused")
            # the best single head on the second backbone, for the fusion goal
            X2 = labelled_codes(data, backbones[1], ["pre_logits"], cache_dir=args.cache,
                                progress=False).features.codes["pre_logits"]
            for kind in [k for k in HEADS if k != "dense"]:
                def run2():
                    h = Head(kind).fit(X2[train], y[train])
                    return h.frozen().fit(X2[train | val], y[train | val]).score(X2[test], y[test])
                acc, s = timed(run2)
                record(f"{backbones[1]} {kind}", acc, s, "single2")
        if "advise" not in skip:
            taps = ["stage1", "stage2", "stage3", "stage4", "stage5", "pre_logits"]
            fit_rows = np.flatnonzero(train | val)
            if len(fit_rows) > 1500:
                fit_rows = np.sort(np.random.default_rng(0).choice(fit_rows, 1500, replace=False))
            blocks = {t: (backbones[0], t, codes.features.codes[t][fit_rows]) for t in taps}
            (scores, best), s = timed(lambda: measure_taps(blocks, y[fit_rows]))
            sweep = {}
            for t in taps:
                Xt = codes.features.codes[t]
                sweep[t] = Head("logistic").fit(Xt[train], y[train]).score(Xt[test], y[test])
            best_sweep = max(sweep, key=sweep.get)
            print(f"{name:12s} sweep test acc by tap: " + ", ".join(f"{t} {a:.3f}" for t, a in sweep.items()))
            print(f"{name:12s} advise recommends {best} (test {sweep[best]:.3f}, {s:.0f}s); sweep's best "
                  f"{best_sweep} ({sweep[best_sweep]:.3f}); gap {sweep[best_sweep] - sweep[best]:+.3f}", flush=True)
            rows.append({"dataset": name, "model": f"advise -> {best}", "kind": "advise", "test_acc": sweep[best],
                         "seconds": s, "interval": f"sweep best {best_sweep} {sweep[best_sweep]:.3f}"})
    table = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.4f")
    print("\nsummary (test accuracy; ratios in the same run):")
    for name, t in table.groupby("dataset", sort=False):
        single = t[t["kind"] == "single"]
        line = [f"{name}:"]
        if len(single):
            best_single = single["test_acc"].max()
            logistic = single[single["model"].str.endswith(" logistic")]["test_acc"]
            line.append(f"best single {best_single:.3f}"
                        + (f", default logistic {logistic.iloc[0]:.3f}" if len(logistic) else ""))
            for kind in ("auto", "fused"):
                v = t[t["kind"] == kind]["test_acc"]
                if len(v):
                    line.append(f"{kind} {v.iloc[0]:.3f} ({v.iloc[0] - best_single:+.3f} vs best single)")
            both = t[t["kind"].isin(["single", "single2"])]
            fused = t[t["kind"] == "fused"]["test_acc"]
            if len(fused) and (t["kind"] == "single2").any():
                best = both.loc[both["test_acc"].idxmax()]
                line.append(f"fused {fused.iloc[0] - best['test_acc']:+.3f} vs the best single-backbone head of "
                            f"either backbone ({best['model']} {best['test_acc']:.3f})")
        st, de = t[t["kind"] == "study"]["test_acc"], t[t["kind"] == "dense"]["test_acc"]
        if len(st) and len(de):
            line.append(f"featx dense {de.iloc[0]:.3f} vs study dense {st.iloc[0]:.3f} ({de.iloc[0] - st.iloc[0]:+.3f})")
        print("  ".join(line))
    print(f"table: {args.out}")


if __name__ == "__main__":
    main()
