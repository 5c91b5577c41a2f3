"""Fine-tuning recipes and unfreeze policies: which layers train, with what optimizer and schedule.

Two recipes (``recipe=``):

``default``
    converges in a few CPU epochs: a short head-only warm-up (a fraction of an epoch, Adam), then the top
    stages unfrozen (``top:2``) with AdamW and a cosine learning-rate decay, light augmentation (shifts and
    zoom of 10 %, horizontal flip), early stopping on the validation split.
``study``
    the 2017 recipe: SGD at 1e-4 with momentum 0.9, constant rate, the study's augmentation, no warm-up.
    It needs the study's hours of epochs.

BatchNormalization layers stay frozen whatever the policy (the standard recipe for small data).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from featx import _tf
from featx.augment import get_augmentation
from featx.errors import FeatxError

# The study: everything for VGG, from layer 94 for Inception/Xception.
STUDY_POLICIES = {"vgg16": "all", "vgg19": "all", "inception_v3": "from:94", "xception": "from:94"}
DEFAULT_POLICY = "top:2"

def one_tap(taps) -> str:
    """The single tap a fine-tuned model reads: ``'stage4'`` or ``['stage4']`` -> ``'stage4'``."""
    taps = [taps] if isinstance(taps, str) else list(taps)
    if len(taps) != 1:
        raise FeatxError(f"fine-tuning reads one tap, got {', '.join(map(str, taps)) or 'none'}", param="taps")
    return taps[0]


def default_policy(backbone: str) -> str:
    return STUDY_POLICIES.get(backbone, DEFAULT_POLICY)


def is_batchnorm(layer) -> bool:
    return type(layer).__name__ in ("BatchNormalization", "SyncBatchNormalization")


def first_trainable_index(base, spec, policy: str) -> int:
    """Index in ``base.layers`` of the first layer an unfreeze policy trains."""
    layers = base.layers
    if policy == "all":
        return 0
    if policy == "none":
        return len(layers)
    kind, _, arg = policy.partition(":")
    if kind == "from" and arg:
        if arg.lstrip("-").isdigit():
            index = int(arg)
            if not -len(layers) <= index < len(layers):
                raise FeatxError(f"layer {index} is out of range (the backbone has {len(layers)} layers)",
                                 param="unfreeze")
            return index % len(layers)
        names = [layer.name for layer in layers]
        if arg in spec.tap_names:
            tap = spec.tap(arg)
            target = layers[tap.layer].name if isinstance(tap.layer, int) else tap.layer
            return names.index(target) + 1  # the layers after the tap
        if arg in names:
            return names.index(arg)
        raise FeatxError(f"{arg!r} is neither a tap ({', '.join(spec.tap_names)}) nor a layer name",
                         param="unfreeze")
    if kind == "top" and arg.isdigit() and int(arg) >= 1:
        stages = [t for t in spec.taps if t.name.startswith("stage")]
        n = int(arg)
        if n >= len(stages):
            return 0
        boundary = stages[-(n + 1)]
        names = [layer.name for layer in layers]
        target = layers[boundary.layer].name if isinstance(boundary.layer, int) else boundary.layer
        return names.index(target) + 1
    raise FeatxError(f"expected all, none, from:<tap|layer|index> or top:<N stages>, got {policy!r}",
                     param="unfreeze")


def apply_unfreeze(base, spec, policy: str) -> list[str]:
    """Set ``trainable`` on the backbone's layers; returns the names now trainable.

    BatchNormalization layers stay frozen whatever the policy.
    """
    start = first_trainable_index(base, spec, policy)
    base.trainable = True
    trainable = []
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start and not is_batchnorm(layer)
        if layer.trainable and layer.weights:
            trainable.append(layer.name)
    return trainable


@dataclass(frozen=True)
class Recipe:
    """One fine-tuning recipe; every field can be overridden by the matching ``finetune`` argument.

    ``warmup``: head-only training before the backbone is unfrozen, in epochs (fractions allowed; 0: none).
    ``optimizer``: ``adamw`` (with ``weight_decay``) or ``sgd`` (with ``momentum``).
    ``schedule``: ``cosine`` (decays to 0 over the planned steps) or ``constant``.
    ``augment``: a preset of :mod:`featx.augment` (``light``, ``study``, ``none``).
    """

    name: str
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    schedule: str
    augment: str
    patience: int
    warmup: float = 0.0
    warmup_learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    label_smoothing: float = 0.0


RECIPES = {
    # chosen from measurements on cifar10_3k and flowers5 (scripts/bench_finetune.py; README)
    "default": Recipe("default", epochs=6, batch_size=32, learning_rate=1e-4, optimizer="adamw", schedule="cosine",
                      augment="light", patience=2, warmup=0.25, weight_decay=1e-4, label_smoothing=0.1),
    # Keras 1.2.2 study: SGD(lr=1e-4, momentum=0.9), ImageDataGenerator as in featx.augment.STUDY
    "study": Recipe("study", epochs=10, batch_size=16, learning_rate=1e-4, optimizer="sgd", schedule="constant",
                    augment="study", patience=3, momentum=0.9),
}


def get_recipe(name: str, **overrides) -> Recipe:
    """The named recipe with the given fields replaced (``None`` values are ignored).

    Raises
    ------
    FeatxError
        For an unknown recipe name or a value out of range (names the option).
    """
    if name not in RECIPES:
        raise FeatxError(f"expected one of {', '.join(RECIPES)}, got {name!r}", param="recipe")
    recipe = replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
    checks = [("epochs", recipe.epochs >= 1, "a positive number of epochs"),
              ("batch_size", recipe.batch_size >= 1, "a positive batch size"),
              ("learning_rate", recipe.learning_rate > 0, "a positive learning rate"),
              ("warmup", recipe.warmup >= 0, "0 or more epochs of head-only warm-up"),
              ("patience", recipe.patience >= 0, "0 or more epochs"),
              ("momentum", 0 <= recipe.momentum < 1, "a momentum in [0, 1)"),
              ("optimizer", recipe.optimizer in ("adamw", "sgd"), "adamw or sgd"),
              ("schedule", recipe.schedule in ("cosine", "constant"), "cosine or constant")]
    for field_name, ok, what in checks:
        if not ok:
            raise FeatxError(f"expected {what}, got {getattr(recipe, field_name)!r}", param=field_name)
    get_augmentation(recipe.augment)
    return recipe


def make_optimizer(recipe: Recipe, steps: int):
    keras = _tf.keras()
    lr = recipe.learning_rate
    if recipe.schedule == "cosine":
        # a linear ramp over the first tenth (Adam's first steps are its largest), then cosine to 0
        ramp = max(1, steps // 10)
        lr = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, steps - ramp), warmup_target=lr,
                                                    warmup_steps=ramp)
    if recipe.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=recipe.weight_decay)
    return keras.optimizers.SGD(lr, momentum=recipe.momentum)
