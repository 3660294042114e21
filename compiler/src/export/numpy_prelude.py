from __future__ import annotations

import math

import numpy as np

# ---- helpers for ops NumPy spells differently (the semantics are the compiler's)


def _sigmoid(x):
    # exp of a non-positive number only: no overflow on either side
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _amax(x, axes, keepdims):
    if x.size == 0:
        return _empty_reduce(x, axes, keepdims, -math.inf)
    return np.max(x, axis=axes, keepdims=keepdims)


def _amin(x, axes, keepdims):
    if x.size == 0:
        return _empty_reduce(x, axes, keepdims, math.inf)
    return np.min(x, axis=axes, keepdims=keepdims)


def _empty_reduce(x, axes, keepdims, fill):
    shape = (
        [1 if i in axes else n for i, n in enumerate(x.shape)]
        if keepdims
        else [n for i, n in enumerate(x.shape) if i not in axes]
    )
    if not np.issubdtype(x.dtype, np.floating):
        fill = np.iinfo(x.dtype).min if fill < 0 else np.iinfo(x.dtype).max
    return np.full(shape, fill, dtype=x.dtype)


def _pad(x, axis, start, full, step):
    # the adjoint of a strided slice: x placed at start, start + step, ... in zeros
    shape = list(x.shape)
    shape[axis] = full
    out = np.zeros(shape, dtype=x.dtype)
    idx = (slice(None),) * axis + (start + step * np.arange(x.shape[axis]),)
    out[idx] = x
    return out


def _along(idx, axis):
    # the full index tuple that addresses idx's positions along `axis`
    grid = list(np.indices(idx.shape, sparse=True))
    grid[axis] = idx
    return tuple(grid)


def _scatter_add_along(base, axis, idx, v):
    out = np.array(base, copy=True)
    np.add.at(out, _along(idx, axis), v)
    return out


def _index_add(base, axis, idx, v):
    out = np.array(base, copy=True)
    flat = np.reshape(v, tuple(base.shape[:axis]) + (-1,) + tuple(base.shape[axis + 1 :]))
    np.add.at(out, (slice(None),) * axis + (np.reshape(idx, -1),), flat)
    return out


def _scatter_set(base, axis, idx, v):
    out = np.array(base, copy=True)
    flat = np.reshape(v, tuple(base.shape[:axis]) + (-1,) + tuple(base.shape[axis + 1 :]))
    out[(slice(None),) * axis + (np.reshape(idx, -1),)] = flat
    return out


def _argsort(x, axis, descending):
    # stable; NaN last in both directions
    if descending:
        x = -x if np.issubdtype(x.dtype, np.floating) else np.invert(x)
    return np.argsort(x, axis=axis, kind="stable")


def _cumsum(x, axis, reverse):
    if reverse:
        x = np.flip(x, axis=axis)
    # accumulate in f64, as the interpreter does, then round once
    out = np.cumsum(x, axis=axis, dtype=np.float64).astype(x.dtype)
    return np.flip(out, axis=axis) if reverse else out


def _logcumsumexp(x, axis, reverse):
    if reverse:
        return np.flip(np.logaddexp.accumulate(np.flip(x, axis=axis), axis=axis), axis=axis)
    return np.logaddexp.accumulate(x, axis=axis)


def _searchsorted(s, v, right):
    out = np.searchsorted(s, v, side="right" if right else "left")
    # NaN sorts last: a NaN value goes after every number
    if np.issubdtype(np.asarray(v).dtype, np.floating):
        out = np.where(np.isnan(v), np.count_nonzero(~np.isnan(s)), out)
    return out.astype(np.int64)


# ---- the counter-based generator: splitmix64 on uint64, bit-identical to the compiler's


def _splitmix64(x):
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniform(seed, step, n, k):
    seed = np.asarray(seed).astype(np.int64).astype(np.uint64)
    step = np.asarray(step).astype(np.int64).astype(np.uint64)
    i = np.arange(n, dtype=np.uint64)
    key = _splitmix64(_splitmix64(_splitmix64(seed) ^ step) ^ (i * np.uint64(2) + np.uint64(k)))
    return (key >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _rand_uniform(seed, step, shape):
    return _uniform(seed, step, math.prod(shape), 0).reshape(shape)


def _rand_normal(seed, step, shape):
    n = math.prod(shape)
    u0 = _uniform(seed, step, n, 0)
    u1 = _uniform(seed, step, n, 1)
    return (np.sqrt(-2.0 * np.log(1.0 - u0)) * np.cos(2.0 * math.pi * u1)).reshape(shape)


# ---- data checks (the shared part follows)


def _first_bad(idx, lo, hi):
    flat = np.reshape(idx, -1)
    bad = np.flatnonzero((flat < lo) | (flat >= hi))
    if bad.size == 0:
        return None
    return int(bad[0]), int(flat[bad[0]])


def _first_dup(idx):
    flat = np.reshape(idx, -1)
    if flat.size < 2:
        return None
    order = np.argsort(flat, kind="stable")
    vals = flat[order]
    again = vals[1:] == vals[:-1]
    if not again.any():
        return None
    k = int(order[1:][again].min())
    return k, int(flat[k])


def _is_concrete(x):
    return True


def _is_array(v):
    return isinstance(v, np.ndarray)


def _convert(x, dtype, what, ty):
    x = np.asarray(x)
    if dtype in ("f32", "f64"):
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(
                "L6105",
                f"{what} is {x.dtype}, but the loss declares {ty}",
                "convert it, e.g. x.astype(np.float32)",
            )
        return x
    if dtype == "i64":
        if not np.issubdtype(x.dtype, np.integer):
            raise DataError(
                "L6105",
                f"{what} is {x.dtype}, but the loss declares {ty}",
                "convert it, e.g. x.astype(np.int64)",
            )
        return x.astype(np.int64)
    if x.dtype != np.bool_:
        raise DataError(
            "L6105",
            f"{what} is {x.dtype}, but the loss declares {ty}",
            "convert it, e.g. x.astype(bool)",
        )
    return x
