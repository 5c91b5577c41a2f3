import pytest

from featx.stats import format_accuracy, small_test_warning, wilson_interval


def test_wilson_hand_checked():
    # 8 of 10: p=0.8, z=1.96 -> centre (0.8+0.19208)/1.38415 = 0.71676, half 0.22770 (worked by hand)
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_edges_stay_inside_unit_interval():
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.1 < high < 0.2
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and 0.8 < low < 0.9
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError, match="correct=11, n=10"):
        wilson_interval(11, 10)


def test_format_and_small_warning():
    assert format_accuracy(8, 10) == "0.800 [0.490, 0.943] (n=10)"
    assert "19 images" in small_test_warning(19)
    assert "smallest class 3" in small_test_warning(100, per_class_min=3)
    assert small_test_warning(100, per_class_min=20) is None
