"""On-device matching vs scipy.optimize.linear_sum_assignment (float64) on fresh seeded random costs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from ovseg_jax.ops.matching import hungarian_matching, masked_hungarian_matching

# Shared so each shape compiles once.
match = jax.jit(hungarian_matching)
masked_match = jax.jit(masked_hungarian_matching)


def _check_structure(indices, n, m):
  batch = indices.shape[0]
  assert indices.shape == (batch, 2, min(n, m)) and indices.dtype == np.int32
  for rows, cols in indices:
    assert np.all(np.diff(rows) > 0) and rows.min() >= 0 and rows.max() < n  # Ascending, distinct.
    assert len(set(cols.tolist())) == len(cols) and cols.min() >= 0 and cols.max() < m


def _assert_optimal(cost, indices):
  cost = np.asarray(cost, np.float64)
  _check_structure(indices, *cost.shape[1:])
  for c, (rows, cols) in zip(cost, indices):
    expected = c[linear_sum_assignment(c)].sum()
    np.testing.assert_allclose(c[rows, cols].sum(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(6, 10, 10), (4, 20, 20), (8, 64, 8), (8, 8, 64), (3, 1, 1)])
def test_random_costs_match_scipy(shape):
  cost = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
  _assert_optimal(cost, np.asarray(match(cost)))


@pytest.mark.parametrize("shape", [(16, 10, 10), (8, 64, 8)])
def test_integer_costs_with_many_ties(shape):
  cost = np.random.default_rng(1).integers(0, 3, size=shape).astype(np.float32)
  cost[0] = 1.0  # All equal.
  _assert_optimal(cost, np.asarray(match(cost)))


def test_masked_columns_when_columns_are_the_smaller_side():
  rng = np.random.default_rng(2)
  cost = rng.random((8, 64, 8), dtype=np.float32)
  valid = rng.random((8, 8)) < 0.6
  valid[0], valid[1] = True, False
  indices, pair_valid = map(np.asarray, masked_match(cost, jnp.asarray(valid)))
  _assert_masked_optimal(cost, valid, indices, pair_valid)


def test_masked_columns_when_fewer_valid_columns_than_rows():
  rng = np.random.default_rng(3)
  cost = rng.normal(size=(12, 6, 10)).astype(np.float32)
  valid = rng.random((12, 10)) < 0.5  # Often fewer than 6 valid columns: not every row can be matched.
  valid[0], valid[1] = True, False
  indices, pair_valid = map(np.asarray, masked_match(cost, jnp.asarray(valid)))
  _assert_masked_optimal(cost, valid, indices, pair_valid)


def _assert_masked_optimal(cost, valid, indices, pair_valid):
  _check_structure(indices, *cost.shape[1:])
  for c, ok, (rows, cols), pair_ok in zip(cost.astype(np.float64), valid, indices, pair_valid):
    np.testing.assert_array_equal(pair_ok, ok[cols])
    restricted = c[:, ok]
    ref_rows, ref_cols = linear_sum_assignment(restricted)
    assert pair_ok.sum() == len(ref_rows)
    np.testing.assert_allclose(c[rows[pair_ok], cols[pair_ok]].sum(), restricted[ref_rows, ref_cols].sum(),
                               rtol=1e-5, atol=1e-6)


def test_vmap_over_an_extra_axis():
  cost = np.random.default_rng(4).random((3, 2, 10, 10), dtype=np.float32)
  indices = np.asarray(jax.jit(jax.vmap(hungarian_matching))(cost))
  assert indices.shape == (3, 2, 2, 10)
  _assert_optimal(cost.reshape(6, 10, 10), indices.reshape(6, 2, 10))


def test_non_finite_costs_still_give_distinct_pairs():
  cost = np.random.default_rng(5).random((6, 10, 10), dtype=np.float32)
  cost[0, 3] = np.nan
  cost[1, :, 4] = np.inf
  cost[2, 5, 5] = -np.inf
  _check_structure(np.asarray(match(cost)), 10, 10)


def test_empty_side():
  assert hungarian_matching(jnp.zeros((2, 0, 5))).shape == (2, 2, 0)


def test_bad_input_errors():
  with pytest.raises(ValueError, match=r"\[B, N, M\]"):
    hungarian_matching(jnp.zeros((4, 4)))
  with pytest.raises(TypeError, match="real"):
    hungarian_matching(jnp.zeros((1, 4, 4), jnp.complex64))
  with pytest.raises(ValueError, match="valid_cols"):
    masked_hungarian_matching(jnp.zeros((2, 4, 3)), jnp.ones((2, 4), bool))
