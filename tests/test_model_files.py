"""Every model file is untrusted until checked (issue 27): a crafted ``model.keras`` + ``featx.json`` or a zip-bomb
``.pth`` is one line naming the file, in ``predict`` and ``serve``, before anything large is allocated."""

import io
import json
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest

from conftest import make_photo, write_image
from featx.errors import FeatxError


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A baseline-like model.keras (224x224 input, 2 classes) with its featx.json, signed as featx writes it."""
    from featx import _tf
    from featx.modelcheck import sign_model
    from featx.modelmeta import ModelDescription

    keras = _tf.keras()
    folder = tmp_path_factory.mktemp("tiny-model")
    inputs = keras.Input((224, 224, 3), name="image")  # mobilenet_v2's side: serve reads it as fine-tuned too
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="softmax")(x))
    model.save(folder / "model.keras")
    ModelDescription("baseline", ("a", "b"), "s", arch="cnn1", size=224).write(folder)
    sign_model(folder / "model.keras")
    image = write_image(folder / "img" / "x.png", make_photo(1, (40, 40)))
    return folder, image


def _copy(tiny_model, tmp_path, meta=None, config_edit=None, model_bytes=None, sign=True):
    """The tiny model in ``tmp_path``, its featx.json replaced by ``meta``, its config.json edited, or its bytes
    replaced; signed again (as if featx had written it) unless ``sign`` is False."""
    from featx.modelcheck import sign_model

    folder, _ = tiny_model
    model = tmp_path / "model.keras"
    original = (folder / "model.keras").read_bytes()
    if config_edit is not None:
        src, out = zipfile.ZipFile(io.BytesIO(original)), io.BytesIO()
        with zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename == "config.json":
                    config = json.loads(data)
                    config_edit(config)
                    data = json.dumps(config).encode()
                dst.writestr(info.filename, data)
        original = out.getvalue()
    model.write_bytes(model_bytes if model_bytes is not None else original)
    text = json.dumps(meta) if meta is not None else (folder / "featx.json").read_text()
    (tmp_path / "featx.json").write_text(text)
    if sign:
        sign_model(model)
    return model


def _dense(config, name="softmax"):
    return next(layer for layer in config["config"]["layers"] if layer["config"].get("name") == name)


def _set_units(units):
    return lambda config: _dense(config)["config"].update(units=units)


def _wide_input(config):  # Dense(60000) reading 60000 inputs: 3.6e9 weights, units each within the bound
    dense = _dense(config)
    dense["config"]["units"] = 60_000
    dense["build_config"]["input_shape"] = [None, 60_000]


BASE = {"kind": "baseline", "arch": "cnn1", "class_names": ["a", "b"], "split_id": "s"}


@pytest.mark.parametrize("kind, edit, message", [
    ("non-zip model", {"model_bytes": b"\x89HDF\r\n\x1a\n" + b"\0" * 200}, "not a Keras 3 model file"),
    ("classes do not match outputs", {"meta": {**BASE, "size": 224, "class_names": ["a", "b", "c"]}},
     "the model has 2 outputs but featx.json names 3 classes"),
    ("size -5", {"meta": {**BASE, "size": -5}}, "size must be a whole number of pixels from 16 to 1024"),
    ("size 1e9", {"meta": {**BASE, "size": 1e9}}, "size must be a whole number"),
    ("size 20000", {"meta": {**BASE, "size": 20000}}, "not 20000"),
    ("size other than the model's", {"meta": {**BASE, "size": 64}}, "the model takes 224x224 images but featx.json"),
    ("Dense units 2^31", {"config_edit": _set_units(2**31)}, "declares units=2,147,483,648"),
    ("Dense units 0", {"config_edit": _set_units(0)}, "declared size is out of range"),
    ("weights of 13 GiB", {"config_edit": _wide_input}, "GiB of weights, over featx's limit"),
    ("repeated class names", {"meta": {**BASE, "size": 224, "class_names": ["a", "a"]}}, "repeated names"),
    ("unsigned", {"sign": False}, "were not written by featx for this user"),
])
def test_a_crafted_model_is_one_line_in_predict_and_serve(tiny_model, tmp_path, capsys, kind, edit, message):
    from featx.cli import main

    model = _copy(tiny_model, tmp_path, **edit)
    _, image = tiny_model
    commands = [["predict", str(model), str(image)]]
    if kind in ("non-zip model", "Dense units 2^31", "unsigned"):  # serve reads fine-tuned models the same way
        meta = json.loads((tmp_path / "featx.json").read_text())
        meta = {"kind": "finetune", "backbone": "mobilenet_v2", "class_names": meta["class_names"], "tap": None}
        model = _copy(tiny_model, tmp_path, meta=meta, sign=edit.get("sign", True), **{
            k: v for k, v in edit.items() if k != "sign"})
        commands.append(["serve", str(model), "--port", "0"])
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("featx: error: ") and "Traceback" not in err[0], err
        assert message in err[0] and ("model.keras" in err[0] or "featx.json" in err[0]), (kind, err)


def test_an_unsigned_model_loads_when_trusted_and_a_signed_one_as_is(tiny_model, tmp_path):
    from featx.prediction import predict

    folder, image = tiny_model
    assert len(predict(folder / "model.keras", [image])) == 1
    (tmp_path / "u").mkdir()
    model = _copy(tiny_model, tmp_path / "u", sign=False)
    with pytest.raises(FeatxError, match="--trust-bundle"):
        predict(model, [image])
    assert len(predict(model, [image], trust=True)) == 1
    (tmp_path / "s").mkdir()
    signed = _copy(tiny_model, tmp_path / "s")
    assert len(predict(signed, [image])) == 1
    meta = tmp_path / "s" / "featx.json"
    meta.write_text(meta.read_text().replace('"a"', '"z"'))  # the signature covers featx.json too
    with pytest.raises(FeatxError, match="modified since"):
        predict(signed, [image])


# ---------------------------------------------------------------- a zip-bomb .pth

def zip_pth(tensors: dict) -> bytes:
    """A zip-format (torch >= 1.6) ``.pth`` without torch: ``{name: float32 storage}`` (1-D tensors)."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while pickling")

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch.FloatStorage, torch._utils, utils._rebuild_tensor_v2 = FloatStorage, utils, _rebuild_tensor_v2

    class Ref:
        def __init__(self, key, n):
            self.key, self.n = key, n

    class TensorRef:
        def __init__(self, ref, n):
            self.args = (ref, 0, (n,), (1,), False, {})

        def __reduce__(self):
            return (_rebuild_tensor_v2, self.args)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", FloatStorage, obj.key, "cpu", obj.n) if isinstance(obj, Ref) else None

    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        buf = io.BytesIO()
        Pickler(buf, protocol=2).dump({name: TensorRef(Ref(str(i), len(t)), len(t))
                                       for i, (name, t) in enumerate(tensors.items())})
    finally:
        for k, v in saved.items():
            sys.modules.pop(k, None) if v is None else sys.modules.__setitem__(k, v)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        for i, t in enumerate(tensors.values()):
            zf.writestr(f"archive/data/{i}", np.asarray(t, "<f4").tobytes())
    return out.getvalue()


def test_a_zip_pth_reads_and_its_total_is_capped_not_only_its_ratio(tmp_path, monkeypatch):
    """Before: each storage under 1000:1 passed, whatever the total (a 1.1 MB file took 2.0 GB)."""
    import featx.backbones.pth as pth

    ok = tmp_path / "ok.pth"
    ok.write_bytes(zip_pth({"w": np.arange(5)}))
    assert pth.load_state_dict(ok)["w"].tolist() == [0, 1, 2, 3, 4]
    bomb = tmp_path / "bomb.pth"
    bomb.write_bytes(zip_pth({f"w{i}": np.zeros(250_000) for i in range(8)}))  # 8 MB of zeros in a few kB
    assert bomb.stat().st_size < 100_000
    monkeypatch.setattr(pth, "PTH_MIN_TOTAL", 2 * 1024**2)  # the rule at a test's scale (64 MiB by default)
    with pytest.raises(pth.PthFormatError, match=r"bomb.pth: its storages decompress to more than 2,097,152 bytes"):
        pth.load_state_dict(bomb)
    assert pth.total_limit(30 * 1024**2) == 480 * 1024**2 and pth.total_limit(10**12) == pth.PTH_MAX_TOTAL
