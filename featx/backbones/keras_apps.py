"""``keras.applications`` backbones: the study's VGG/Inception/Xception and friends.

Each entry names the Keras constructor, the module whose ``preprocess_input``
the network was trained with, its input size and its taps.  Tap layers are
Keras layer names, or negative indices for the few layers Keras names
automatically (``activation_17`` changes with how many models a process built).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featx import _tf

# name: (constructor, preprocess module, input size, extra kwargs, taps)
# taps: (name, layer, channels, stride); stageK is always stride 2**K
KERAS_APPS = {
    "vgg16": ("VGG16", "vgg16", 224, {}, [
        ("stage1", "block1_pool", 64, 2), ("stage2", "block2_pool", 128, 4),
        ("stage3", "block3_pool", 256, 8), ("stage4", "block4_pool", 512, 16),
        ("stage5", "block5_pool", 512, 32), ("pre_logits", "fc2", 4096, 32),
        ("logits", "predictions", 1000, 32)]),
    "vgg19": ("VGG19", "vgg19", 224, {}, [
        ("stage1", "block1_pool", 64, 2), ("stage2", "block2_pool", 128, 4),
        ("stage3", "block3_pool", 256, 8), ("stage4", "block4_pool", 512, 16),
        ("stage5", "block5_pool", 512, 32), ("pre_logits", "fc2", 4096, 32),
        ("logits", "predictions", 1000, 32)]),
    "resnet50": ("ResNet50", "resnet", 224, {}, [
        ("stage1", "conv1_relu", 64, 2), ("stage2", "conv2_block3_out", 256, 4),
        ("stage3", "conv3_block4_out", 512, 8), ("stage4", "conv4_block6_out", 1024, 16),
        ("stage5", "conv5_block3_out", 2048, 32), ("pre_logits", "avg_pool", 2048, 32),
        ("logits", "predictions", 1000, 32)]),
    "inception_v3": ("InceptionV3", "inception_v3", 299, {}, [
        ("stage3", "mixed2", 288, 8), ("stage4", "mixed7", 768, 16),
        ("stage5", "mixed10", 2048, 32), ("pre_logits", "avg_pool", 2048, 32),
        ("logits", "predictions", 1000, 32)]),
    "xception": ("Xception", "xception", 299, {}, [
        ("stage1", "block2_sepconv2_bn", 128, 2), ("stage2", "block3_sepconv2_bn", 256, 4),
        ("stage3", "block4_sepconv2_bn", 728, 8), ("stage4", "block13_sepconv2_bn", 1024, 16),
        ("stage5", "block14_sepconv2_act", 2048, 32), ("pre_logits", "avg_pool", 2048, 32),
        ("logits", "predictions", 1000, 32)]),
    "mobilenet_v3_large": ("MobileNetV3Large", "mobilenet_v3", 224, {"input_shape": (224, 224, 3)}, [
        ("stage1", "expanded_conv_add", 16, 2), ("stage2", "expanded_conv_2_add", 24, 4),
        ("stage3", "expanded_conv_5_add", 40, 8), ("stage4", "expanded_conv_11_add", 112, 16),
        ("stage5", "expanded_conv_14_add", 160, 32), ("pre_logits", -4, 1280, 32),
        ("logits", "predictions", 1000, 32)]),
    "mobilenet_v3_small": ("MobileNetV3Small", "mobilenet_v3", 224, {"input_shape": (224, 224, 3)}, [
        ("stage3", "expanded_conv_2_add", 24, 8), ("stage4", "expanded_conv_7_add", 48, 16),
        ("stage5", "expanded_conv_10_add", 96, 32), ("pre_logits", -4, 1024, 32),
        ("logits", "predictions", 1000, 32)]),
    "efficientnet_b0": ("EfficientNetB0", "efficientnet", 224, {}, [
        ("stage2", "block2b_add", 24, 4), ("stage3", "block3b_add", 40, 8),
        ("stage4", "block5c_add", 112, 16), ("stage5", "block7a_project_bn", 320, 32),
        ("features", "top_activation", 1280, 32), ("pre_logits", "avg_pool", 1280, 32),
        ("logits", "predictions", 1000, 32)]),
    "convnext_tiny": ("ConvNeXtTiny", "convnext", 224, {}, [
        ("stage2", "convnext_tiny_stage_0_block_2_identity", 96, 4),
        ("stage3", "convnext_tiny_stage_1_block_2_identity", 192, 8),
        ("stage4", "convnext_tiny_stage_2_block_8_identity", 384, 16),
        ("stage5", "convnext_tiny_stage_3_block_2_identity", 768, 32),
        ("pre_logits", "convnext_tiny_head_layernorm", 768, 32),
        ("logits", "convnext_tiny_head_dense", 1000, 32)]),
}


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights could not be downloaded (no internet)."""


def build_keras_app(name: str, weights: str | Path | None):
    """The full classifier (raw logits, no softmax) with the given weights."""
    keras = _tf.keras()

    constructor, _module, _size, kwargs, _taps = KERAS_APPS[name]
    fn = getattr(keras.applications, constructor)
    try:
        return fn(weights=None if weights is None else str(weights), classifier_activation=None, **kwargs)
    except Exception as exc:  # noqa: BLE001 - keras wraps network errors in plain Exception
        if weights == "imagenet" and ("URL fetch failure" in str(exc) or isinstance(exc, OSError)):
            raise WeightsUnavailableError(str(exc)) from exc
        raise


def keras_normalizer(name: str):
    """The network's own ``preprocess_input`` on float RGB in [0, 255]."""
    module_name = KERAS_APPS[name][1]

    def normalize(batch: np.ndarray) -> np.ndarray:
        keras = _tf.keras()

        module = getattr(keras.applications, module_name)
        return np.asarray(module.preprocess_input(batch.astype(np.float32, copy=True)), dtype=np.float32)

    return normalize
