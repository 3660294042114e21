# ---- the PyTorch API (EXPORT.md)


def _working_dtype(arrays):
    floats = [x.dtype for x in arrays if x.is_floating_point()]
    # f32 unless every float input is f64; bf16 and f16 compute in f32
    return torch.float64 if floats and all(d == torch.float64 for d in floats) else torch.float32


def _device(arrays):
    for x in arrays:
        return x.device
    return torch.device("cpu")


class _LossFunction(torch.autograd.Function):
    """Forward: the optimised graph. Backward: the compiler's gradient graph."""

    @staticmethod
    def forward(ctx, meta, *args):
        dims, checks, dev, F, in_dtypes, d, scale = meta
        loss, new_state, reports, saved = _forward(
            *args, _dims=dict(dims), _checks=checks, _dev=dev, _F=F, _dist=d
        )
        ctx.save_for_backward(*saved)
        ctx.meta = meta
        ctx.n_args = len(args)
        extra = []
        for x in tuple(new_state) + tuple(reports):
            # a value returned as it came in would alias an input
            extra.append(x.clone() if any(x is y for y in args) else x)
        ctx.mark_non_differentiable(*extra)
        return (loss,) + tuple(extra)

    @staticmethod
    def backward(ctx, g_loss, *unused):
        dims, checks, dev, F, in_dtypes, d, scale = ctx.meta
        grads = _backward(*ctx.saved_tensors, _dims=dict(dims), _dev=dev, _F=F, _dist=d)
        out = [None] * (1 + ctx.n_args)
        for k, g in zip(_DIFF, grads):
            # under DDP, which averages gradients over ranks, `scale` is the world size
            out[1 + k] = (g * (g_loss * scale)).to(in_dtypes[k])
        return tuple(out)


def init_state(dims=None, device=None, params=None):
    """The initial state as a dict of tensors (`dims` binds the sizes of state tables)."""
    dims = {k: int(v) for k, v in (dims or {}).items()}
    dev = torch.device(device) if device is not None else torch.device("cpu")
    _, pvals, _, _ = _bind_params_only(params)
    pts = _param_tensors(pvals, dev, torch.float32)
    for d in _state_dims():
        if d not in dims:
            raise DataError(
                "L6109",
                f"the size `{d}` of a state table is not bound",
                f"pass dims={{'{d}': ...}}",
            )
    vals = _init_values(*pts, _dims=dims, _dev=dev, _F=torch.float32, _dist=None)
    return {d["name"]: _as_state(v, d, dev) for d, v in zip(SIGNATURE["state"], vals)}


def _state_dims():
    out = []
    for axes in _STATE_AXES:
        for how, what in axes:
            if how == "sym" and what not in out:
                out.append(what)
    return out


def _bind_params_only(params):
    pvals = []
    pnames = [d["name"] for d in SIGNATURE["params"]]
    for n in params or {}:
        if n not in pnames:
            raise DataError(
                "L6101", f"unknown param `{n}`", f"the params of `{NAME}` are: {', '.join(pnames)}"
            )
    for decl in SIGNATURE["params"]:
        pvals.append(_param_value(decl, (params or {}).get(decl["name"], decl["default"])))
    return None, pvals, None, None


def _param_tensors(pvals, dev, F):
    out = []
    for decl, v in zip(SIGNATURE["params"], pvals):
        dtype = {"f32": F, "f64": torch.float64, "i64": torch.int64, "bool": torch.bool}[decl["dtype"]]
        if isinstance(v, torch.Tensor):
            out.append(v.to(device=dev, dtype=dtype))
        else:
            out.append(torch.tensor(v, dtype=dtype, device=dev))
    return out


def _as_state(v, decl, dev):
    dtype = {"f32": torch.float32, "f64": torch.float64, "i64": torch.int64, "bool": torch.bool}[
        decl["dtype"]
    ]
    return torch.as_tensor(v).to(device=dev, dtype=dtype)


def loss_fn(inputs, params=None, state=None, *, checks=True, dims=None, group=None, ddp=False):
    """(loss, new_state, reports) of one call; differentiable in the `diff` inputs.

    With `group` (a torch.distributed process group, e.g. `group.WORLD`), each rank
    passes its shard of the batch and gets the full-batch loss and new state, and
    the gradient of its own rows; `ddp=True` scales the gradient for
    DistributedDataParallel, which averages over ranks."""
    d = None
    err = None
    if group is not None and _BATCH is None:
        raise ValueError(f"`{NAME}` has no batch dim: its first `diff` input has no named leading dim")
    try:
        if group is None:
            arrays, pvals, svals, bound = _bind(inputs, params, state, dims)
        else:
            # each rank holds its rows of every input with the batch dim (its first
            # such axis); other axes of that size are the full batch
            local_axes = []
            for axes in _INPUT_AXES:
                first = next((i for i, a in enumerate(axes) if a == ("sym", _BATCH)), None)
                local_axes.append([("sym", _LOCAL) if i == first else a for i, a in enumerate(axes)])
            arrays, pvals, svals, bound = _bind(inputs, params, state, dims, local_axes, (_BATCH,))
    except DataError as e:
        if group is None:
            raise
        err, arrays, bound = e, [], {}
    if group is not None:
        rows = bound.get(_LOCAL, 0)
        d = _Dist(group, rows, _device([t for t in inputs.values() if isinstance(t, torch.Tensor)]))
        if err is None and _BATCH in bound and bound[_BATCH] != d.total:
            err = DataError(
                "L6106",
                f"{_BATCH} = {bound[_BATCH]} on this rank, but the ranks hold {d.total} rows of the batch together",
                "a full-batch axis must have every rank's rows",
            )
        _agree(err, d)
        bound[_BATCH] = d.total
    elif _BATCH is not None:
        bound[_LOCAL] = bound[_BATCH]
    dev = _device(arrays)
    F = _working_dtype(arrays)
    in_dtypes = tuple(x.dtype for x in arrays)
    args = []
    for decl, x in zip(SIGNATURE["inputs"], arrays):
        args.append(x.to(F) if decl["dtype"] == "f32" and x.dtype != F else x)
    pts = _param_tensors(pvals, dev, F)
    if any(v is None for v in svals):
        init = _init_values(*pts, _dims=bound, _dev=dev, _F=F, _dist=None)
        svals = [v if v is not None else i for v, i in zip(svals, init)]
    sts = []
    for decl, v in zip(SIGNATURE["state"], svals):
        dtype = {"f32": F, "f64": torch.float64, "i64": torch.int64, "bool": torch.bool}[decl["dtype"]]
        sts.append(torch.as_tensor(v).to(device=dev, dtype=dtype))
    scale = float(d.world) if (d is not None and ddp) else 1.0
    meta = (tuple(sorted(bound.items())), bool(checks), dev, F, in_dtypes, d, scale)
    outs = _LossFunction.apply(meta, *args, *pts, *sts)
    loss = outs[0]
    ns = len(SIGNATURE["state"])
    new_state = {}
    for decl, v in zip(SIGNATURE["state"], outs[1 : 1 + ns]):
        new_state[decl["name"]] = v.to(torch.float32) if decl["dtype"] == "f32" else v
    reports = dict(zip(SIGNATURE["reports"], outs[1 + ns :]))
    if d is not None:
        _LAST_CALL["dist"] = d
    return loss, new_state, reports


# The last distributed call's view of the group: `.bytes` counts what this rank
# sent in collectives, forward and (once it has run) backward.
_LAST_CALL = {"dist": None}


class Loss(torch.nn.Module):
    """The loss as a module: params are attributes, state lives in registered
    buffers (in `state_dict()`, moved by `.to()`), updated by calls in training
    mode only; `last_reports` holds the reports of the last call."""

    def __init__(self, dims=None, checks=True, distributed=False, group=None, ddp=False, **params):
        super().__init__()
        self.distributed = distributed
        self.group = group
        self.ddp = ddp
        pnames = [d["name"] for d in SIGNATURE["params"]]
        for n in params:
            if n not in pnames:
                raise DataError(
                    "L6101", f"unknown param `{n}`", f"the params of `{NAME}` are: {', '.join(pnames)}"
                )
        for decl in SIGNATURE["params"]:
            setattr(self, decl["name"], params.get(decl["name"], decl["default"]))
        self.checks = checks
        self.last_reports = {}
        self._dims = dict(dims or {})
        needed = _state_dims()
        ready = all(d in self._dims for d in needed)
        init = init_state(self._dims, params=self._params()) if ready else {}
        for decl in SIGNATURE["state"]:
            self.register_buffer(decl["name"], init.get(decl["name"]))

    def _params(self):
        return {d["name"]: getattr(self, d["name"]) for d in SIGNATURE["params"]}

    def forward(self, *args, **kwargs):
        names = [d["name"] for d in SIGNATURE["inputs"]]
        if len(args) > len(names):
            raise TypeError(f"`{NAME}` takes {len(names)} inputs, got {len(args)}")
        inputs = dict(zip(names, args))
        for k, v in kwargs.items():
            if k in inputs:
                raise TypeError(f"input `{k}` given twice")
            inputs[k] = v
        state = {d["name"]: getattr(self, d["name"]) for d in SIGNATURE["state"]}
        state = {k: v for k, v in state.items() if v is not None}
        group = None
        if self.distributed:
            import torch.distributed as dist

            group = self.group if self.group is not None else dist.group.WORLD
        loss, new_state, reports = loss_fn(
            inputs, self._params(), state, checks=self.checks, dims=self._dims, group=group, ddp=self.ddp
        )
        # eval mode reads the state but never changes it (like BatchNorm's statistics)
        if self.training:
            for k, v in new_state.items():
                self._buffers[k] = v.detach()
        self.last_reports = reports
        return loss
