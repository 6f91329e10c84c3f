"""The grid filter's prediction blur adds exactly the process noise it is given."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvl_ros.localizer import GridFilter
from cvl_ros.localizer.filter import blur


def _variance(m: np.ndarray) -> float:
    x = np.arange(len(m)) - (len(m) - 1) / 2.0
    return float((m * x**2).sum() / m.sum())


@settings(max_examples=60, deadline=None)
@given(st.floats(0.01, 3.0))
def test_blur_adds_the_variance_asked_for(sigma_cells):
    """A delta blurred along one axis has variance sigma^2 (cells^2): 0.5 % for the 3-tap
    kernel's range, 3 % for the sampled Gaussian above it (truncated at 3 sigma: up to 2.7 %
    less). The old sampled Gaussian below one cell added none under 0.17 cells and a third of
    it at 0.36."""
    a = np.zeros((3, 41, 41))
    a[1, 20, 20] = 1.0
    b = blur(a, sigma_cells, (1, 2), "constant")
    assert b.sum() == pytest.approx(1.0, abs=1e-9)
    tol = 0.005 if sigma_cells < 0.7 else 0.03
    assert _variance(b[1].sum(axis=1)) == pytest.approx(sigma_cells**2, rel=tol)
    assert _variance(b[1].sum(axis=0)) == pytest.approx(sigma_cells**2, rel=tol)
    assert np.all(b >= 0.0)
    np.testing.assert_array_equal(b[0], 0.0)  # the other axis is not blurred
    assert blur(a, 0.0, (1, 2), "constant") is a


def test_many_small_predictions_add_up_to_the_random_walk():
    """100 predictions of 0.2 m noise on a 1 m grid: the belief's variance grows by
    100 x 0.04 m^2, as the documented noise model says (before: not at all)."""
    f = GridFilter()
    f.init_gaussian((0.0, 0.0), 1.0, 60.0, 1.0)
    v0 = f.stats(30.0).cov_local
    for _ in range(100):
        f.predict((0.0, 0.0), 0.2)
    v1 = f.stats(30.0).cov_local
    np.testing.assert_allclose(np.diag(v1 - v0), [4.0, 4.0], rtol=0.03)
