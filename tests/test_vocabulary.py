"""featx.vocabulary is the one list of allowed values: the modules that act on a value accept exactly these.

What it can catch: a value added to (or dropped from) an implementation but not to the vocabulary, or the
reverse, so that the API and the CLI would offer different choices.
"""

from __future__ import annotations

import pytest

from featx import augment, heads, vocabulary
from featx.errors import FeatxError
from featx.training import recipes


def test_each_implementation_accepts_exactly_the_vocabulary():
    assert set(augment.PRESETS) == set(vocabulary.AUGMENTATIONS)
    assert set(recipes.RECIPES) == set(vocabulary.RECIPES)
    assert tuple(heads.HEADS) == vocabulary.HEADS
    assert vocabulary.HEAD_CHOICES == ("auto",) + vocabulary.HEADS
    assert vocabulary.EXTRACT_ENGINES[:len(vocabulary.ENGINES)] == vocabulary.ENGINES


def test_check_choice_names_the_keyword_and_what_was_given():
    assert vocabulary.check_choice("flip", vocabulary.TTA_MODES, "tta") == "flip"
    with pytest.raises(FeatxError) as caught:
        vocabulary.check_choice("mirror", vocabulary.TTA_MODES, "tta")
    assert caught.value.param == "tta" and str(caught.value) == "tta: expected one of none, flip, views, got 'mirror'"


@pytest.mark.parametrize("field, value", [("dtype", "int8"), ("pooling", "median")])
def test_the_extractor_config_refuses_values_outside_the_vocabulary(field, value):
    from featx.config import ExtractorConfig

    with pytest.raises(FeatxError, match=f"expected one of .*got '{value}'") as caught:
        ExtractorConfig("mobilenet_v2", **{field: value})
    assert caught.value.param == field


@pytest.mark.parametrize("argv, hint", [
    (["--head", "logistc"], "(did you mean 'logistic'?)"),
    (["--backbone", "mobilenetv2"], "(did you mean 'mobilenet_v2'?)"),
])
def test_a_mistyped_head_or_backbone_gets_did_you_mean(tmp_path, capsys, argv, hint):
    """A new user's `--head logistc` and `--backbone mobilenetv2` listed the choices but named none."""
    from featx.cli import main

    (tmp_path / "d" / "a").mkdir(parents=True)
    assert main(["fit-head", str(tmp_path / "d"), *argv, "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert hint in err and len(err.strip().splitlines()) == 1, err
