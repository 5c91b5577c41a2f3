"""One way to write a run: the output folder, metrics.json's schema, the runs-log row, featx.json, RunResult.

What it can catch: a route writing metrics.json without a key the schema promises, a runs-log row that
disagrees with metrics.json, a default folder spelt differently, featx.json bytes changing (old models
must keep loading), and the former dict-style result access breaking.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from featx.errors import FeatxError
from featx.modelmeta import ModelDescription, read_model_meta
from featx.outputs import METRICS_SCHEMA, RunOutputs, RunResult, check_metrics


def metrics(**changes) -> dict:
    m = {"dataset": "tints", "route": "cached", "backbone": "mobilenet_v2", "taps": ["pre_logits", "stage4"],
         "split_id": "abc123", "n": {"train": 6, "val": 2, "test": 3},
         "accuracy": {"train": 1.0, "val": 0.5, "test": 2 / 3}, "evaluated_on": "test", "classes_not_evaluated": []}
    m.update(changes)
    return m


def test_the_schema_names_every_key_check_metrics_requires():
    assert check_metrics(metrics()) is not None
    for key in (k for k in METRICS_SCHEMA if not k.startswith("<")):
        broken = metrics()
        del broken[key]
        with pytest.raises(ValueError, match=key):
            check_metrics(broken)
    with pytest.raises(ValueError, match="route"):
        check_metrics(metrics(route="magic"))
    with pytest.raises(ValueError, match="one entry per split"):
        check_metrics(metrics(n={"train": 6}))


def test_the_default_folder_is_spelt_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert RunOutputs("tints", "finetune", "mobilenet_v2-finetune").folder.as_posix() == \
        "featx-out/tints-mobilenet_v2-finetune"
    assert RunOutputs("tints", "baseline", "cnn1", out_dir=tmp_path / "x").folder == tmp_path / "x"


def test_metrics_and_the_runs_log_row_come_from_one_dict(tmp_path):
    out = RunOutputs("tints", "cached", "ignored", out_dir=tmp_path / "run", cache_dir=tmp_path / "cache")
    written = out.write_metrics(metrics())
    assert json.loads(written.read_text())["split_id"] == "abc123"
    out.log_run(metrics(), head="logistic+flip", output=tmp_path / "run" / "model.featx", extract_s=1.5, fit_s=0.25)
    row = pd.read_csv(tmp_path / "cache" / "runs.csv").iloc[-1]
    assert (row["dataset"], row["route"], row["backbone"], row["taps"], row["head"]) == \
        ("tints", "cached", "mobilenet_v2", "pre_logits+stage4", "logistic+flip")
    assert (row["n_train"], row["n_val"], row["n_test"]) == (6, 2, 3)
    assert row["test_acc"] == pytest.approx(2 / 3, abs=1e-4) and row["fit_s"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="lacks evaluated_on"):
        out.write_metrics({k: v for k, v in metrics().items() if k != "evaluated_on"})


def test_plots_are_skipped_when_there_is_nothing_to_draw(tmp_path):
    out = RunOutputs("tints", "baseline", "cnn1", out_dir=tmp_path)
    assert out.plot_curves({}, "no epochs") is None and out.plot_confusion([], [], ["a"], "none") is None
    assert not (tmp_path / "curves.png").exists()
    assert out.plot_curves({"loss": [1.0, 0.5], "accuracy": [0.4, 0.8]}, "two epochs").stat().st_size > 1000


@pytest.mark.parametrize("description, expected", [
    (ModelDescription("finetune", ("a", "b"), "s1", backbone="mobilenet_v2", tap="stage4"),
     '{\n  "kind": "finetune",\n  "backbone": "mobilenet_v2",\n  "class_names": [\n    "a",\n    "b"\n  ],\n'
     '  "tap": "stage4",\n  "split_id": "s1"\n}'),
    (ModelDescription("baseline", ("a", "b"), "s2", arch="cnn1", size=32),
     '{\n  "kind": "baseline",\n  "arch": "cnn1",\n  "size": 32,\n  "class_names": [\n    "a",\n    "b"\n  ],\n'
     '  "split_id": "s2"\n}'),
])
def test_featx_json_keeps_its_bytes_and_reads_back(tmp_path, description, expected):
    (tmp_path / "model.keras").write_bytes(b"PK")
    assert description.write(tmp_path).read_text() == expected  # the bytes earlier releases wrote
    assert ModelDescription.read(tmp_path / "model.keras") == description
    assert read_model_meta(tmp_path / "model.keras")["class_names"] == ["a", "b"]


def test_a_description_without_kind_is_a_finetune_and_a_bad_one_names_the_file(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"PK")
    (tmp_path / "featx.json").write_text(json.dumps({"backbone": "mobilenet_v2", "class_names": [1, 2]}))
    assert ModelDescription.read(tmp_path / "model.keras").kind == "finetune"
    (tmp_path / "featx.json").write_text(json.dumps({"kind": "baseline", "class_names": ["a"], "size": "big"}))
    with pytest.raises(FeatxError, match="featx.json: not a featx model description"):
        ModelDescription.read(tmp_path / "model.keras")


def test_run_result_is_one_type_with_the_former_dict_access(tmp_path):
    result = RunResult(tmp_path / "model.keras", metrics(), tmp_path)
    assert result["model"] == result.model == result.bundle == tmp_path / "model.keras"
    assert result["metrics"]["dataset"] == "tints" and result["out_dir"] == tmp_path
    assert "metrics" in result and sorted(result.keys()) == ["metrics", "model", "out_dir"]
    assert result.get("history") is None and dict(result)["out_dir"] == tmp_path
    with pytest.raises(KeyError):
        result["history"]
