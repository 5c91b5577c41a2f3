import pickle
import struct

import numpy as np
import pytest

from featx.backbones.pth import PthFormatError, UnsafePthError, load_state_dict
from featx.backbones.registry import get_backbone


def test_reads_packaged_mobilenet_weights():
    path = get_backbone("mobilenet_v2").weights_file("imagenet")
    state = load_state_dict(path)
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["classifier.1.weight"].shape == (1000, 1280)
    assert state["features.0.0.weight"].dtype == np.float32
    assert np.isfinite(state["classifier.1.weight"]).all()
    assert state["features.0.1.running_var"].min() > 0  # real statistics, not zeros


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _legacy_file(path, payload: bytes):
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"little_endian": True}, f, protocol=2)
        f.write(payload)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    _legacy_file(bad, pickle.dumps({"w": _RunsCode(marker)}, protocol=2))
    with pytest.raises(UnsafePthError, match="refused to load 'posix.system'|refused to load 'os.system'"):
        load_state_dict(bad)
    assert not marker.exists()


def test_malicious_header_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    with pytest.raises(UnsafePthError):
        load_state_dict(bad)
    assert not marker.exists()


def test_truncated_file_is_a_format_error(tmp_path):
    good = get_backbone("efficientnet_lite0").weights_file("imagenet")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(PthFormatError, match="truncated"):
        load_state_dict(cut)


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"hello, not a pickle" + struct.pack("<q", 7))
    with pytest.raises(PthFormatError):
        load_state_dict(junk)
