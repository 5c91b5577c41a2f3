import subprocess
import sys

import pytest

from featx.cli import main


def test_backbones_table(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["name", "input", "code"]
    row = next(line for line in lines if line.startswith("efficientnet_lite2 "))
    assert "260" in row.split() and "1280" in row.split() and row.rstrip().endswith("yes")
    assert any(line.startswith("vgg16 ") and line.rstrip().endswith("no") for line in lines)


def test_peek_prints_top_k(capsys, sample_images):
    assert main(["peek", str(sample_images["china"]), "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("china.jpg")
    assert out[1].split()[:2] == ["1.", "palace"]
    assert len(out) == 4


@pytest.mark.parametrize("content", [None, b"\x00garbage"])
def test_peek_bad_image_is_one_line_and_exit_2(tmp_path, content):
    path = tmp_path / "broken.jpg"
    if content is not None:
        path.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "featx.cli", "peek", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("featx: error:")]
    assert len(errors) == 1 and str(path) in errors[0]
    assert "Traceback" not in proc.stderr


def test_unknown_backbone_exit_2(capsys, sample_images):
    assert main(["peek", str(sample_images["china"]), "--backbone", "nope"]) == 2
    assert "unknown backbone 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("given, expected", [(None, "1"), ("0", "0")])
def test_onednn_is_enabled_unless_the_user_chose(given, expected):
    import os

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if given is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = given
    code = "import os, featx; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected
