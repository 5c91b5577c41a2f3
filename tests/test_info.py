"""``featx info``: what a bug report needs, read without importing a backend unless devices are asked for."""

import json
import re

from featx import _tf
from featx.cli import main
from featx.info import describe, format_info


def test_info_json_describes_versions_backend_engines_and_folders(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FEATX_CACHE", raising=False)
    cache = tmp_path / "cache"
    (cache / "engines").mkdir(parents=True)
    (cache / "engines" / "mobilenet_v2-0123456789abcdef.tflite").write_bytes(b"x")
    assert main(["info", "--json", "--no-devices", "--cache", str(cache)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"]["name"] == "tensorflow" and info["devices"] is None
    assert info["packages"]["keras"] == _tf.package_version("keras") and "torch" in info["packages"]
    assert info["cache"] == {"folder": str(cache.resolve()), "exists": True, "configurations": 0,
                             "converted_models": str((cache / "engines").resolve()), "converted": 1}
    assert info["engines"]["keras"] == "yes, on tensorflow" and info["cores"] >= 1


def test_info_table_lists_the_devices_the_backend_sees(tmp_path, capsys):
    info = describe(tmp_path / "nowhere", devices=True)
    assert info["devices"] and info["devices"][0].startswith("CPU:0")
    assert info["gpu"] == any(d.startswith("GPU:") for d in info["devices"])
    text = format_info(info)
    lines = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in text.splitlines() if "  " in line.strip())
    assert lines["backend"].startswith("tensorflow") and lines["devices"].startswith("CPU:0")
    assert "(not created yet)" in lines["cache"] and str((tmp_path / "nowhere").resolve()) in lines["cache"]
    assert main(["info", "--cache", str(tmp_path)]) == 0
    assert "converted models" in capsys.readouterr().out
