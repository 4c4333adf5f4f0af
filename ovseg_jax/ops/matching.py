"""Exact minimum-cost bipartite matching on device (linear sum assignment), batched and jit-able.

The solver is the shortest-augmenting-path algorithm (Jonker-Volgenant style, as described by Crouse 2016
and used by `scipy.optimize.linear_sum_assignment`): rows join the matching one at a time, each along a
shortest augmenting path in reduced costs (Dijkstra over columns), while dual potentials `u, v` keep the
partial matching optimal. Work is O(rows^2 * cols); the cost is transposed when needed so that the smaller
side is the rows (S-Seg: 8 pseudo masks x 64 predicted masks). Every loop is a `lax.while_loop` or
`fori_loop` with static shapes, vmapped over the batch, so matching runs inside the jitted train step.

Costs must be finite. That is not checked at run time (it would need a host sync): with NaN or infinite
entries the result is still a set of distinct in-range pairs, but not necessarily an optimal one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _assign_rows(cost: jax.Array, row_valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Optimal assignment of the valid rows of one `cost [n, m]`, n <= m, where +inf marks forbidden pairs.

  Returns `col4row [n]` and `row4col [m]`, -1 where unassigned (rows not valid, or left without any
  allowed column). Rows are skipped, not given a cost, so they never perturb the others' optimum.
  """
  n, m = cost.shape
  inf = jnp.array(jnp.inf, cost.dtype)

  def add_row(cur, state):
    u, v, col4row, row4col = state
    free = row4col < 0

    def search_step(search):
      i, min_val, dist, path, scanned, _, _ = search
      reduced = min_val + cost[i] - u[i] - v
      shorter = ~scanned & (reduced < dist)
      path = jnp.where(shorter, i, path)
      dist = jnp.where(shorter, reduced, dist)
      candidates = jnp.where(scanned, inf, dist)
      lowest = jnp.min(candidates)
      # Among equally short paths prefer one ending at a free column: with tied (e.g. integer) costs that
      # ends the search early instead of walking through every tied matched column.
      j = jnp.argmin(jnp.where(candidates == lowest, jnp.where(free, 0, 1), 2))
      found = lowest < inf  # False also for NaN: the search then stops instead of looping on garbage.
      scanned = scanned.at[j].set(scanned[j] | found)
      sink = jnp.where(found & free[j], j, -1)
      i = jnp.where(found & ~free[j], row4col[j], i)
      return i, jnp.where(found, lowest, min_val), dist, path, scanned, sink, ~found | (sink >= 0)

    init = (cur, jnp.zeros((), cost.dtype), jnp.full((m,), inf), jnp.zeros((m,), jnp.int32),
            jnp.zeros((m,), bool), jnp.array(-1, jnp.int32), ~row_valid[cur])
    _, min_val, dist, path, scanned, sink, _ = jax.lax.while_loop(lambda s: ~s[-1], search_step, init)
    success = sink >= 0

    # Dual update: every scanned column (and the row matched to it) moves by how much shorter its path was
    # than the augmenting one; this keeps all reduced costs >= 0 and the new matched edges tight.
    slack = jnp.where(scanned, min_val - dist, 0)
    matched = col4row >= 0
    new_u = (u + jnp.where(matched, slack[jnp.maximum(col4row, 0)], 0)).at[cur].add(min_val)
    u = jnp.where(success, new_u, u)
    v = jnp.where(success, v - slack, v)

    def flip_step(flip):
      j, col4row, row4col, _ = flip
      i = path[j]
      previous = col4row[i]
      return previous, col4row.at[i].set(j), row4col.at[j].set(i), i == cur

    _, col4row, row4col, _ = jax.lax.while_loop(
        lambda f: ~f[-1], flip_step, (sink, col4row, row4col, ~success))
    return u, v, col4row, row4col

  state = (jnp.zeros((n,), cost.dtype), jnp.zeros((m,), cost.dtype),
           jnp.full((n,), -1, jnp.int32), jnp.full((m,), -1, jnp.int32))
  _, _, col4row, row4col = jax.lax.fori_loop(0, n, add_row, state)
  return col4row, row4col


def _fill_unassigned(col4row: jax.Array, row4col: jax.Array) -> jax.Array:
  """Gives each unassigned row a distinct unused column, in order, so every row has a partner."""
  unassigned = col4row < 0
  rank = jnp.cumsum(unassigned) - 1
  free_first = jnp.argsort(row4col >= 0, stable=True).astype(jnp.int32)
  return jnp.where(unassigned, free_first[jnp.maximum(rank, 0)], col4row)


def _match_one(cost: jax.Array, valid_cols: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[N, M] cost, [M] valid columns -> ([2, min(N, M)] rows then columns, [min(N, M)] pair is valid)."""
  n, m = cost.shape
  if n > m:  # Columns become the rows: invalid ones are simply never added.
    col4row, row4col = _assign_rows(cost.T, valid_cols)
    pred_for_target = _fill_unassigned(col4row, row4col)
    order = jnp.argsort(pred_for_target).astype(jnp.int32)
    rows, cols = pred_for_target[order], order
  else:
    # Every row must take a column but only k columns are valid: when k < n, exactly n - k invalid columns
    # become free "unmatched" slots (cost 0), so the optimum is the best matching saturating the valid
    # columns; the remaining invalid columns are forbidden. No big constant, so no float32 precision loss.
    num_dummies = n - jnp.sum(valid_cols)
    dummy = ~valid_cols & (jnp.cumsum(~valid_cols) <= num_dummies)
    allowed = jnp.where(valid_cols, cost, jnp.where(dummy, 0, jnp.inf).astype(cost.dtype))
    col4row, row4col = _assign_rows(allowed, jnp.ones((n,), bool))
    rows, cols = jnp.arange(n, dtype=jnp.int32), _fill_unassigned(col4row, row4col)
  return jnp.stack([rows, cols]), valid_cols[cols]


def masked_hungarian_matching(cost: jax.Array, valid_cols: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Optimal assignment that never uses invalid (e.g. padded) columns.

  Args:
    cost: [B, N, M] real costs (computed in float32, or float64 if given), e.g. predictions x targets.
    valid_cols: [B, M] bool, False for padded targets.

  Returns:
    `(indices, pair_valid)`: `indices` int32 [B, 2, min(N, M)] as in `hungarian_matching`, and
    `pair_valid` bool [B, min(N, M)], True where the pair's column is valid. The valid pairs are an
    optimal assignment of the problem restricted to the valid columns (min(N, number valid) pairs, same
    total cost as `scipy.optimize.linear_sum_assignment(cost[b][:, valid_cols[b]])`). The other pairs only
    pad the output: they use distinct leftover rows and columns and must be ignored.
  """
  cost = _checked_cost(cost)
  batch, n, m = cost.shape
  if valid_cols.shape != (batch, m) or valid_cols.dtype != bool:
    raise ValueError(f"valid_cols must be bool [B, M] = [{batch}, {m}] matching cost {cost.shape}, got "
                     f"{valid_cols.dtype} {valid_cols.shape}; pass e.g. `num_targets_mask > 0`.")
  if min(n, m) == 0:
    return jnp.zeros((batch, 2, 0), jnp.int32), jnp.zeros((batch, 0), bool)
  return jax.vmap(_match_one)(cost, valid_cols)


def hungarian_matching(cost: jax.Array) -> jax.Array:
  """Optimal assignment per batch element, like `scipy.optimize.linear_sum_assignment`, on device.

  Args:
    cost: [B, N, M] real costs (computed in float32, or float64 if given); must be finite.

  Returns:
    int32 [B, 2, min(N, M)]: for each batch element the rows (ascending) then the columns of a
    minimum-total-cost assignment. With ties the assignment may differ from scipy's; its cost does not.
  """
  cost = _checked_cost(cost)
  batch, _, m = cost.shape
  return masked_hungarian_matching(cost, jnp.ones((batch, m), bool))[0]


def _checked_cost(cost: jax.Array) -> jax.Array:
  cost = jnp.asarray(cost)
  if cost.ndim != 3:
    raise ValueError(f"cost must be [B, N, M] (a batch of matrices), got shape {cost.shape}; "
                     "add a leading batch axis with cost[None] for a single matrix.")
  if not (jnp.issubdtype(cost.dtype, jnp.floating) or jnp.issubdtype(cost.dtype, jnp.integer)
          or cost.dtype == bool):
    raise TypeError(f"cost must be real (float, int or bool), got {cost.dtype}.")
  return cost.astype(jnp.promote_types(cost.dtype, jnp.float32))
