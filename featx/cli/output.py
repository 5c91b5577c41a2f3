"""Small pieces of the commands' printed results, shared so that every command words them the same way."""

from __future__ import annotations


def plural(n: int, word: str) -> str:
    """``plural(1, 'epoch')`` -> ``'1 epoch'``; ``plural(3, 'epoch')`` -> ``'3 epochs'``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def train_accuracy(metrics: dict) -> str:
    """The training accuracy of a trained network's ``metrics.json`` to 3 places, ``-`` when not measured."""
    accuracy = metrics["accuracy"]["train"]
    return "-" if accuracy is None else format(accuracy, ".3f")
