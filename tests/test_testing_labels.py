"""The rounding-aware label comparison that many tests use."""
import numpy as np
import pytest
import torch

from mmseg_ovss.testing.labels import (assert_equal_where_decided,
                                       decided_pixels)


def test_decided_pixels_marks_margins_above_the_bound_on_any_axis():
    # class axis first: pixel margins 0.3, 0.1, 0.0 (an exact tie), 0.25
    scores = torch.tensor([[0.5, 0.1, 0.4, 0.05],
                           [0.2, 0.2, 0.4, 0.30],
                           [0.1, 0.0, 0.2, 0.00]])
    expected = torch.tensor([True, False, False, True])
    assert torch.equal(decided_pixels(scores, 0.2), expected)
    # the same scores with the classes last
    assert torch.equal(decided_pixels(scores.t(), 0.2, dim=1), expected)
    # a margin equal to the bound is not decided
    assert not decided_pixels(torch.tensor([[1.0], [0.5]]), 0.5).any()


def test_decided_pixels_needs_two_classes():
    with pytest.raises(ValueError, match=r'2 classes along dim 0.*\(1, 4\)'):
        decided_pixels(torch.zeros(1, 4), 0.1)


def test_labels_are_compared_only_where_decided():
    decided = torch.tensor([True, True, False, True])
    expected = np.array([1, 2, 3, 4])
    # differs only at the undecided pixel: accepted, torch against numpy
    assert_equal_where_decided(torch.tensor([1, 2, 0, 4]), expected,
                               decided, min_fraction=0.5)
    with pytest.raises(AssertionError):  # differs at a decided pixel
        assert_equal_where_decided(torch.tensor([1, 0, 3, 4]), expected,
                                   decided, min_fraction=0.5)
    with pytest.raises(AssertionError, match='75.0% of the pixels'):
        assert_equal_where_decided(expected, expected, decided,
                                   min_fraction=0.8)
