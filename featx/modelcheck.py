"""A ``model.keras`` is untrusted until checked: its file, its layers' sizes and its signature, before Keras reads it.

Why: ``predict`` and ``serve`` load a ``model.keras`` with its ``featx.json`` (:mod:`featx.modelmeta`).
A crafted folder (a non-zip "model", a class list that does not match the outputs, an input size of
20,000, a Dense layer of 2^31 units) ended in tracebacks, a server answering 500 to every upload, or
gigabytes allocated.  So, before Keras builds anything (it allocates every layer's weights first):

* the file must be a zip holding ``config.json`` and ``model.weights.h5``, with declared sizes within
  :data:`MAX_MODEL_BYTES` (a zip bomb is refused from its directory);
* every layer's ``units``/``filters`` within 1..:data:`MAX_UNITS`, and the weights' memory, estimated from
  the layers' declared shapes (:func:`estimate_parameters`), within :data:`MAX_MODEL_BYTES`;
* the model's outputs must number the classes of ``featx.json``, and its input side must be the
  backbone's (fine-tuned) or the description's ``size`` (baseline);
* like a ``model.featx`` bundle (:mod:`featx.bundle`), the pair is signed when featx writes it: an HMAC
  under this user's key over the model's SHA-256 and ``featx.json``'s bytes, in ``featx.sig`` beside
  them.  An unsigned or modified pair is refused unless trusted (``trust=True``, ``--trust-bundle``);
  the size checks apply to trusted models too.

Every refusal is one :class:`featx.errors.FeatxError` line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from featx.backbones.registry import get_backbone
from featx.bundle import sign_payload, signature_matches
from featx.errors import FeatxError
from featx.modelmeta import META_FILE, ModelDescription

#: The signature file beside ``model.keras`` and ``featx.json``.
SIGNATURE_FILE = "featx.sig"
#: Largest ``units``/``filters`` a layer may declare (featx's heads use 1,024; MobileNetV2's widest is 1,280).
MAX_UNITS = 65_536
#: Largest estimated weight memory of a model, and largest declared size of its zip's members, bytes.
MAX_MODEL_BYTES = 4 * 1024**3
#: Largest ``config.json``, bytes (featx's fine-tuned MobileNetV2 writes about 230 kB).
MAX_CONFIG_BYTES = 16 * 1024**2
_BYTES_PER_PARAMETER = 4  # float32 weights


@dataclass(frozen=True)
class ModelFacts:
    """What the checks read from a ``model.keras``'s config: parameters (estimated), outputs, input side."""

    parameters: int
    outputs: int | None
    input_side: int | None

    @property
    def weight_bytes(self) -> int:
        return self.parameters * _BYTES_PER_PARAMETER


def _digest(model_path: Path) -> bytes:
    h = hashlib.sha256()
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    meta = model_path.with_name(META_FILE).read_bytes()
    return h.digest() + hashlib.sha256(meta).digest()


def sign_model(model_path) -> Path:
    """Write ``featx.sig`` beside ``model_path`` (and its ``featx.json``): featx wrote this pair, for this user."""
    model_path = Path(model_path)
    path = model_path.with_name(SIGNATURE_FILE)
    path.write_text(sign_payload(_digest(model_path)) + "\n")
    return path


def is_signed(model_path) -> bool:
    """True when ``featx.sig`` beside ``model_path`` matches the model and its ``featx.json`` under this user's key."""
    model_path = Path(model_path)
    try:
        signature = model_path.with_name(SIGNATURE_FILE).read_text().strip()
        return signature_matches(_digest(model_path), signature)
    except OSError:
        return False


def read_config(model_path) -> dict:
    """The Keras config of ``model_path``, after checking the zip's directory (never extracting more than
    the config).  Raises :class:`FeatxError` for a non-zip, a missing member or declared sizes past the limits."""
    model_path = Path(model_path)
    what = "a Keras 3 model file (a zip with config.json and model.weights.h5) as featx finetune or baseline write"
    try:
        if not zipfile.is_zipfile(model_path):
            raise FeatxError(f"{model_path}: not {what}")
        with zipfile.ZipFile(model_path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            if "config.json" not in infos or "model.weights.h5" not in infos:
                raise FeatxError(f"{model_path}: not {what}")
            declared = sum(i.file_size for i in infos.values())
            if declared > MAX_MODEL_BYTES + MAX_CONFIG_BYTES or infos["config.json"].file_size > MAX_CONFIG_BYTES:
                raise FeatxError(f"{model_path}: its members declare {declared:,} bytes, over featx's limit of "
                                 f"{MAX_MODEL_BYTES:,}; the file is corrupt or crafted")
            config = json.loads(zf.read("config.json"))
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError) as exc:
        raise FeatxError(f"{model_path}: cannot read the model file ({exc}); it is damaged or not {what}") from None
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise FeatxError(f"{model_path}: config.json is not a Keras model config")
    return config


def _layers(node):
    """Every layer dict (``class_name`` + ``config``) in a Keras config, nested models included."""
    if isinstance(node, dict):
        if isinstance(node.get("class_name"), str) and isinstance(node.get("config"), dict):
            yield node
        for value in node.values():
            yield from _layers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _layers(value)


def _count(value) -> int:
    """A declared size as a positive int; :class:`ValueError` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(repr(value))
    return value


def layer_parameters(layer: dict) -> int:
    """Weights one layer will allocate, from its declared sizes (0 for layers without weights or not known here).

    Dense: ``in x units + units``; Conv*: ``prod(kernel) x in_channels x filters + filters``; depthwise:
    ``prod(kernel) x in_channels x multiplier``; BatchNormalization: ``4 x channels``; Embedding:
    ``input_dim x output_dim``.  ``in``: the last axis of the layer's ``build_config.input_shape``.
    Raises :class:`ValueError` for a ``units``/``filters`` outside 1..MAX_UNITS or a malformed size.
    """
    kind, config = layer["class_name"], layer["config"]
    for key in ("units", "filters"):
        if key in config and _count(config[key]) > MAX_UNITS:
            raise ValueError(f"layer {config.get('name')!r} declares {key}={config[key]:,} (at most {MAX_UNITS:,})")
    shape = (layer.get("build_config") or {}).get("input_shape")
    last = shape[-1] if isinstance(shape, list) and shape and isinstance(shape[-1], int) else None
    if last is None:
        return 0
    last = _count(last)
    kernel = 1
    for k in config.get("kernel_size") or ():
        kernel *= _count(k)
    if kind in ("Dense", "EinsumDense") and "units" in config:
        return last * config["units"] + config["units"]
    if kind.startswith("Conv") and "filters" in config:
        return kernel * last * config["filters"] + config["filters"]
    if kind in ("DepthwiseConv2D", "DepthwiseConv1D"):
        return kernel * last * _count(config.get("depth_multiplier", 1))
    if kind == "BatchNormalization":
        return 4 * last
    if kind == "Embedding":
        return _count(config.get("input_dim")) * _count(config.get("output_dim"))
    return 0


def model_facts(config: dict) -> ModelFacts:
    """Estimated parameters, output units and input side of a Keras config (``None`` where not declared)."""
    parameters = sum(layer_parameters(layer) for layer in _layers(config))
    top = config["config"].get("layers") or []
    names = {layer.get("config", {}).get("name"): layer for layer in top if isinstance(layer, dict)}
    outputs_spec = config["config"].get("output_layers")
    if isinstance(outputs_spec, list) and outputs_spec and isinstance(outputs_spec[0], list):
        outputs_spec = outputs_spec[0]
    last = names.get(outputs_spec[0]) if isinstance(outputs_spec, list) and outputs_spec else (top[-1] if top else None)
    outputs = (last or {}).get("config", {}).get("units")
    side = None
    for layer in top:
        if isinstance(layer, dict) and layer.get("class_name") == "InputLayer":
            shape = layer["config"].get("batch_shape") or layer["config"].get("batch_input_shape")
            if isinstance(shape, list) and len(shape) == 4 and isinstance(shape[1], int):
                side = shape[1]
            break
    return ModelFacts(parameters, outputs if isinstance(outputs, int) else None, side)


def expected_side(description: ModelDescription) -> int:
    """The input side ``description`` feeds the model: the backbone's, or a baseline's ``size``."""
    return description.size if description.kind == "baseline" else get_backbone(description.backbone).input_size


def check_model_file(model_path, description: ModelDescription, trust: bool = False) -> ModelFacts:
    """Check ``model_path`` against its description and featx's limits before Keras reads it (module docstring).

    Returns
    -------
    ModelFacts
        What the config declares (parameters estimated from the layers' sizes).

    Raises
    ------
    FeatxError
        Not a Keras zip, sizes past the limits, outputs or input side not those of ``featx.json``, or (without
        ``trust``) not signed by featx for this user.  One line naming the file.
    """
    model_path = Path(model_path)
    config = read_config(model_path)
    try:
        facts = model_facts(config)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise FeatxError(f"{model_path}: a layer's declared size is out of range ({exc}); "
                         "the file is corrupt or crafted") from None
    if facts.weight_bytes > MAX_MODEL_BYTES:
        raise FeatxError(f"{model_path}: its layers would need about {facts.weight_bytes / 2**30:.1f} GiB of weights, "
                         f"over featx's limit of {MAX_MODEL_BYTES / 2**30:.0f} GiB; the file is corrupt or crafted")
    n = len(description.class_names)
    if facts.outputs is not None and facts.outputs != n:
        raise FeatxError(f"{model_path}: the model has {facts.outputs} outputs but {META_FILE} names {n} classes; "
                         f"they must match (was {META_FILE} edited or copied from another model?)")
    side = expected_side(description)
    if facts.input_side is not None and facts.input_side != side:
        raise FeatxError(f"{model_path}: the model takes {facts.input_side}x{facts.input_side} images but "
                         f"{META_FILE} says {side}x{side}; they must match")
    if not trust and not is_signed(model_path):
        raise FeatxError(f"{model_path}: this model and its {META_FILE} were not written by featx for this user, "
                         f"or were modified since (no matching {SIGNATURE_FILE}); featx refuses models it cannot "
                         "vouch for. If you trust its origin, pass --trust-bundle")
    return facts


def check_loaded(model_path, model, description: ModelDescription) -> None:
    """After loading: the outputs and input side Keras built are what the description says (the config may not
    declare them where :func:`model_facts` looks).  Raises :class:`FeatxError`."""
    n = len(description.class_names)
    try:
        outputs = model.output_shape[-1]
        side = model.input_shape[1]
    except (AttributeError, IndexError, TypeError, ValueError):
        raise FeatxError(f"{model_path}: not a single-input, single-output image classifier") from None
    if outputs != n:
        raise FeatxError(f"{model_path}: the model has {outputs} outputs but {META_FILE} names {n} classes; "
                         "they must match")
    if side is not None and side != expected_side(description):
        raise FeatxError(f"{model_path}: the model takes {side}x{side} images but {META_FILE} says "
                         f"{expected_side(description)}; they must match")
