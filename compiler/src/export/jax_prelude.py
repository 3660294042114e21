from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

# ---- helpers for ops JAX spells differently (the semantics are the compiler's)


def _f64():
    # without jax_enable_x64 the widest float is f32
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _i64():
    return jnp.int64 if jax.config.jax_enable_x64 else jnp.int32


def _sigmoid(x):
    return jax.nn.sigmoid(x)


def _amax(x, axes, keepdims):
    if x.size == 0:
        return _empty_reduce(x, axes, keepdims, -math.inf)
    return jnp.max(x, axis=axes, keepdims=keepdims)


def _amin(x, axes, keepdims):
    if x.size == 0:
        return _empty_reduce(x, axes, keepdims, math.inf)
    return jnp.min(x, axis=axes, keepdims=keepdims)


def _empty_reduce(x, axes, keepdims, fill):
    shape = (
        [1 if i in axes else n for i, n in enumerate(x.shape)]
        if keepdims
        else [n for i, n in enumerate(x.shape) if i not in axes]
    )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        fill = jnp.iinfo(x.dtype).min if fill < 0 else jnp.iinfo(x.dtype).max
    return jnp.full(shape, fill, dtype=x.dtype)


def _pad(x, axis, start, full, step):
    # the adjoint of a strided slice: x placed at start, start + step, ... in zeros
    shape = list(x.shape)
    shape[axis] = full
    idx = (slice(None),) * axis + (start + step * jnp.arange(x.shape[axis]),)
    return jnp.zeros(shape, dtype=x.dtype).at[idx].set(x)


def _along(idx, axis):
    grid = list(jnp.indices(idx.shape, sparse=True))
    grid[axis] = idx
    return tuple(grid)


def _scatter_add_along(base, axis, idx, v):
    return base.at[_along(idx, axis)].add(v.astype(base.dtype))


def _index_add(base, axis, idx, v):
    flat = jnp.reshape(v, tuple(base.shape[:axis]) + (-1,) + tuple(base.shape[axis + 1 :]))
    return base.at[(slice(None),) * axis + (jnp.reshape(idx, -1),)].add(flat.astype(base.dtype))


def _scatter_set(base, axis, idx, v):
    flat = jnp.reshape(v, tuple(base.shape[:axis]) + (-1,) + tuple(base.shape[axis + 1 :]))
    return base.at[(slice(None),) * axis + (jnp.reshape(idx, -1),)].set(flat.astype(base.dtype))


def _argsort(x, axis, descending):
    # stable; NaN last in both directions
    if descending:
        x = -x if jnp.issubdtype(x.dtype, jnp.floating) else jnp.invert(x)
    return jnp.argsort(x, axis=axis, stable=True)


def _cumsum(x, axis, reverse):
    if reverse:
        x = jnp.flip(x, axis=axis)
    out = jnp.cumsum(x, axis=axis, dtype=_f64() if jnp.issubdtype(x.dtype, jnp.floating) else None).astype(
        x.dtype
    )
    return jnp.flip(out, axis=axis) if reverse else out


def _logcumsumexp(x, axis, reverse):
    return jax.lax.cumlogsumexp(x, axis=axis, reverse=reverse)


def _searchsorted(s, v, right):
    out = jnp.searchsorted(s, v, side="right" if right else "left")
    # NaN sorts last: a NaN value goes after every number
    if jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating):
        out = jnp.where(jnp.isnan(v), jnp.sum(~jnp.isnan(s)), out)
    return out.astype(_i64())


# ---- the counter-based generator: splitmix64 on pairs of uint32 (hi, lo), so it
# is bit-identical to the compiler's with or without jax_enable_x64

_U32 = 0xFFFFFFFF


def _u32(c):
    return jnp.uint32(c & _U32)


def _mul32(a, b):
    # the full 64-bit product of two uint32 arrays, from 16-bit halves
    a0, a1 = a & 0xFFFF, a >> 16
    b0, b1 = b & 0xFFFF, b >> 16
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> 16) + (p01 & 0xFFFF) + (p10 & 0xFFFF)
    lo = (p00 & 0xFFFF) | ((mid & 0xFFFF) << 16)
    hi = p11 + (p01 >> 16) + (p10 >> 16) + (mid >> 16)
    return hi, lo


def _mulc(x, c):
    hi, lo = x
    phi, plo = _mul32(lo, _u32(c))
    return phi + lo * _u32(c >> 32) + hi * _u32(c), plo


def _addc(x, c):
    hi, lo = x
    nlo = lo + _u32(c)
    return hi + _u32(c >> 32) + (nlo < lo).astype(jnp.uint32), nlo


def _xor(x, y):
    return x[0] ^ y[0], x[1] ^ y[1]


def _shr(x, k):
    hi, lo = x
    return hi >> k, (lo >> k) | (hi << (32 - k))


def _splitmix64(x):
    z = _addc(x, 0x9E3779B97F4A7C15)
    z = _mulc(_xor(z, _shr(z, 30)), 0xBF58476D1CE4E5B9)
    z = _mulc(_xor(z, _shr(z, 27)), 0x94D049BB133111EB)
    return _xor(z, _shr(z, 31))


def _split(v):
    v = jnp.asarray(v)
    lo = v.astype(jnp.uint32)
    if v.dtype.itemsize == 8:
        hi = (v >> 32).astype(jnp.uint32)
    else:
        hi = jnp.where(v < 0, jnp.uint32(_U32), jnp.uint32(0))
    return hi, lo


def _uniform(seed, step, n, k):
    i = jnp.arange(n, dtype=jnp.uint32)
    ik = (jnp.zeros_like(i), i * 2 + k)
    key = _splitmix64(_xor(_splitmix64(_xor(_splitmix64(_split(seed)), _split(step))), ik))
    hi, lo = _shr(key, 11)
    F = _f64()
    return (hi.astype(F) * 4294967296.0 + lo.astype(F)) * (1.0 / 9007199254740992.0)


def _rand_uniform(seed, step, shape):
    return _uniform(seed, step, math.prod(shape), 0).reshape(shape)


def _rand_normal(seed, step, shape):
    n = math.prod(shape)
    u0 = _uniform(seed, step, n, 0)
    u1 = _uniform(seed, step, n, 1)
    return (jnp.sqrt(-2.0 * jnp.log(1.0 - u0)) * jnp.cos(2.0 * math.pi * u1)).reshape(shape)


# ---- data checks (the shared part follows); under jax.jit the values are
# abstract and the checks are skipped


def _is_concrete(x):
    return not isinstance(x, jax.core.Tracer)


def _first_bad(idx, lo, hi):
    if not _is_concrete(idx):
        return None
    flat = jnp.reshape(idx, -1)
    bad = (flat < lo) | (flat >= hi)
    if not bool(jnp.any(bad)):
        return None
    k = int(jnp.argmax(bad))
    return k, int(flat[k])


def _first_dup(idx):
    if not _is_concrete(idx):
        return None
    flat = jnp.reshape(idx, -1)
    if flat.size < 2:
        return None
    order = jnp.argsort(flat, stable=True)
    vals = flat[order]
    again = vals[1:] == vals[:-1]
    if not bool(jnp.any(again)):
        return None
    k = int(jnp.min(jnp.where(again, order[1:], flat.size)))
    return k, int(flat[k])


def _is_array(v):
    return isinstance(v, jax.Array)


def _convert(x, dtype, what, ty):
    x = jnp.asarray(x)
    if dtype in ("f32", "f64"):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise DataError(
                "L6105",
                f"{what} is {x.dtype}, but the loss declares {ty}",
                "convert it, e.g. x.astype(jnp.float32)",
            )
        return x
    if dtype == "i64":
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise DataError(
                "L6105",
                f"{what} is {x.dtype}, but the loss declares {ty}",
                "convert it, e.g. x.astype(jnp.int32)",
            )
        return x.astype(_i64())
    if x.dtype != jnp.bool_:
        raise DataError(
            "L6105",
            f"{what} is {x.dtype}, but the loss declares {ty}",
            "convert it, e.g. x.astype(bool)",
        )
    return x
