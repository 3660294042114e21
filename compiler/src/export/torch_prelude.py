from __future__ import annotations

import math

import torch

# ---- helpers for ops PyTorch spells differently (the semantics are the compiler's)


def _amax(x, dims, keepdim):
    # max over no elements is -inf (torch.amax refuses an empty reduction)
    if x.numel() == 0:
        return _empty_reduce(x, dims, keepdim, -math.inf)
    return torch.amax(x, dim=dims, keepdim=keepdim)


def _amin(x, dims, keepdim):
    if x.numel() == 0:
        return _empty_reduce(x, dims, keepdim, math.inf)
    return torch.amin(x, dim=dims, keepdim=keepdim)


def _empty_reduce(x, dims, keepdim, fill):
    shape = (
        [1 if i in dims else n for i, n in enumerate(x.shape)]
        if keepdim
        else [n for i, n in enumerate(x.shape) if i not in dims]
    )
    if not x.is_floating_point():
        fill = torch.iinfo(x.dtype).min if fill < 0 else torch.iinfo(x.dtype).max
    return torch.full(shape, fill, dtype=x.dtype, device=x.device)


def _slice(x, axis, start, length, step):
    if step == 1:
        return torch.narrow(x, axis, start, length)
    idx = torch.arange(length, device=x.device) * step + start
    return torch.index_select(x, axis, idx)


def _pad(x, axis, start, full, step):
    # the adjoint of _slice: x placed at start, start + step, ... in zeros of length `full`
    shape = list(x.shape)
    shape[axis] = full
    out = torch.zeros(shape, dtype=x.dtype, device=x.device)
    idx = torch.arange(x.shape[axis], device=x.device) * step + start
    return out.index_copy(axis, idx, x)


def _index_select(x, axis, idx):
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1 :]))


def _index_add(base, axis, idx, v):
    flat = v.reshape(tuple(base.shape[:axis]) + (-1,) + tuple(base.shape[axis + 1 :]))
    return base.index_add(axis, idx.reshape(-1), flat.to(base.dtype))


def _scatter_set(base, axis, idx, v):
    flat = v.reshape(tuple(base.shape[:axis]) + (-1,) + tuple(base.shape[axis + 1 :]))
    return base.index_copy(axis, idx.reshape(-1), flat.to(base.dtype))


def _one_hot(idx, depth, dtype):
    # -1 gives a zero row (checked ids lie in -1..depth)
    return (idx.unsqueeze(-1) == torch.arange(depth, device=idx.device)).to(dtype)


def _argsort(x, axis, descending):
    # stable; NaN last in both directions (torch puts NaN first when descending)
    if descending:
        x = torch.bitwise_not(x) if not x.is_floating_point() else -x
    return torch.argsort(x, dim=axis, stable=True)


def _cumsum(x, axis, reverse):
    if reverse:
        x = torch.flip(x, (axis,))
    # accumulate in f64, as the interpreter does, then round once
    out = torch.cumsum(x, dim=axis, dtype=torch.float64).to(x.dtype)
    return torch.flip(out, (axis,)) if reverse else out


def _logcumsumexp(x, axis, reverse):
    if reverse:
        return torch.flip(torch.logcumsumexp(torch.flip(x, (axis,)), dim=axis), (axis,))
    return torch.logcumsumexp(x, dim=axis)


def _searchsorted(s, v, right):
    v = v.to(s.dtype)
    out = torch.searchsorted(s, v, right=right)
    # NaN sorts last, as in NumPy: a NaN value goes after every number
    return torch.where(torch.isnan(v), (~torch.isnan(s)).sum(), out) if v.is_floating_point() else out


def _to_int(x):
    return torch.as_tensor(x).to(torch.int64)


# ---- the counter-based generator: splitmix64 on int64 (wrapping), bit-identical
# to the compiler's for the uniform draws


def _s64(c):
    return c - (1 << 64) if c >= (1 << 63) else c


def _shr(z, k):
    return (z >> k) & ((1 << (64 - k)) - 1)


def _splitmix64(x):
    z = x + _s64(0x9E3779B97F4A7C15)
    z = (z ^ _shr(z, 30)) * _s64(0xBF58476D1CE4E5B9)
    z = (z ^ _shr(z, 27)) * _s64(0x94D049BB133111EB)
    return z ^ _shr(z, 31)


def _uniform(seed, step, n, k, device):
    i = torch.arange(n, device=device, dtype=torch.int64)
    key = _splitmix64(
        _splitmix64(_splitmix64(_to_int(seed).to(device)) ^ _to_int(step).to(device)) ^ (i * 2 + k)
    )
    return _shr(key, 11).to(torch.float64) * (1.0 / 9007199254740992.0)


def _rand_uniform(seed, step, shape, device):
    n = math.prod(shape)
    return _uniform(seed, step, n, 0, device).reshape(shape)


def _rand_normal(seed, step, shape, device):
    n = math.prod(shape)
    u0 = _uniform(seed, step, n, 0, device)
    u1 = _uniform(seed, step, n, 1, device)
    return (torch.sqrt(-2.0 * torch.log(1.0 - u0)) * torch.cos(2.0 * math.pi * u1)).reshape(shape)


# ---- data checks (the shared part follows)


def _first_bad(idx, lo, hi):
    bad = (idx < lo) | (idx >= hi)
    if not bool(bad.any()):
        return None
    k = int(torch.nonzero(bad.reshape(-1))[0, 0])
    return k, int(idx.reshape(-1)[k])


def _first_dup(idx):
    flat = idx.reshape(-1)
    if flat.numel() < 2:
        return None
    vals, order = torch.sort(flat, stable=True)
    again = vals[1:] == vals[:-1]
    if not bool(again.any()):
        return None
    k = int(order[1:][again].min())
    return k, int(flat[k])


def _is_concrete(x):
    return True


def _is_array(v):
    return isinstance(v, torch.Tensor)


def _convert(x, dtype, what, ty):
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if dtype in ("f32", "f64"):
        if not x.is_floating_point():
            raise DataError(
                "L6105",
                f"{what} is {str(x.dtype).replace('torch.', '')}, but the loss declares {ty}",
                "convert it, e.g. x.float()",
            )
        return x
    if dtype == "i64":
        if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
            raise DataError(
                "L6105",
                f"{what} is {str(x.dtype).replace('torch.', '')}, but the loss declares {ty}",
                "convert it, e.g. x.long()",
            )
        return x.to(torch.int64)
    if x.dtype != torch.bool:
        raise DataError(
            "L6105",
            f"{what} is {str(x.dtype).replace('torch.', '')}, but the loss declares {ty}",
            "convert it, e.g. x.bool()",
        )
    return x


# ---- one loss over many ranks (EXPORT.md, "Distributed"): the collectives the
# shard plan inserts. Without a process group (`_dist is None`) each is the identity.


class _Dist:
    """A call's view of the process group: every rank's share of the batch, this
    rank's offset in it, and the bytes this rank has sent in collectives."""

    def __init__(self, group, rows: int, device) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        # NCCL communicates CUDA tensors, gloo CPU ones
        self.device = (
            device if dist.get_backend(group) != "nccl" else torch.device("cuda", torch.cuda.current_device())
        )
        self.bytes = 0
        sizes = self._all_gather_ints(rows)
        self.sizes = sizes
        self.rows = rows
        self.offset = sum(sizes[: self.rank])
        self.total = sum(sizes)

    def _all_gather_ints(self, v: int) -> list:
        t = torch.tensor([v], dtype=torch.int64, device=self.device)
        parts = [torch.zeros_like(t) for _ in range(self.world)]
        self.dist.all_gather(parts, t, group=self.group)
        self.bytes += 8
        return [int(p.item()) for p in parts]

    def agree(self, err):
        # one small all-reduce: the lowest rank that found bad data, if any
        flag = torch.tensor(
            [self.rank if err is not None else self.world], dtype=torch.int64, device=self.device
        )
        self.dist.all_reduce(flag, op=self.dist.ReduceOp.MIN, group=self.group)
        self.bytes += 8
        first = int(flag.item())
        if first == self.world:
            return None
        # every rank raises the failing rank's message (the failing rank sends it)
        box = [(err.code, str(err), err.help)] if self.rank == first else [None]
        self.dist.broadcast_object_list(
            box, src=self.dist.get_global_rank(self.group, first), group=self.group
        )
        code, message, help = box[0]
        return DataError(code, f"rank {first}: {message}", help)


def _gather(x, axis, d):
    """Every rank's rows of `x` along `axis`, in rank order (shards may differ in size)."""
    if d is None:
        return x
    x = torch.as_tensor(x)
    was_bool = x.dtype == torch.bool
    if was_bool:
        x = x.to(torch.uint8)
    pad = max(d.sizes) - x.shape[axis]
    if pad:
        shape = list(x.shape)
        shape[axis] = pad
        x = torch.cat([x, torch.zeros(shape, dtype=x.dtype, device=x.device)], axis)
    x = x.contiguous().to(d.device)
    parts = [torch.empty_like(x) for _ in range(d.world)]
    d.dist.all_gather(parts, x, group=d.group)
    d.bytes += x.numel() * x.element_size()
    out = torch.cat([torch.narrow(p, axis, 0, n) for p, n in zip(parts, d.sizes)], axis)
    return out.bool() if was_bool else out


def _local(x, axis, d):
    """This rank's rows of a replicated `x` along `axis` (no communication)."""
    if d is None:
        return x
    return torch.narrow(x, axis, d.offset, d.rows)


def _all_reduce(x, op, d):
    if d is None:
        return x
    x = torch.as_tensor(x)
    y = x.to(torch.int64) if x.dtype == torch.bool else x.clone()
    dev = y.device
    y = y.to(d.device)
    ops = {"sum": d.dist.ReduceOp.SUM, "max": d.dist.ReduceOp.MAX, "min": d.dist.ReduceOp.MIN}
    d.dist.all_reduce(y, op=ops[op], group=d.group)
    d.bytes += y.numel() * y.element_size()
    y = y.to(dev)
    return y.bool() if x.dtype == torch.bool else y
