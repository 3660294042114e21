class DataError(ValueError):
    """The data does not fit the loss: the message names the input, the axis or
    position and the value, as `lossc` does. `.code` is the CLI's error code."""

    def __init__(self, code: str, message: str, help: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.help = help


def _unravel(k: int, shape: tuple) -> list:
    pos = []
    for n in reversed(shape):
        pos.append(k % n if n else 0)
        k = k // n if n else 0
    return list(reversed(pos))


def _position(k, shape, who, idx_units, in_units):
    # The position of the offending entry, in the input it was read from when
    # the index comes from one (unit axes dropped and restored).
    pos = _unravel(k, tuple(shape))
    if who is None:
        return None, pos
    if sum(not u for u in idx_units) == sum(not u for u in in_units):
        rest = iter([p for p, u in zip(pos, idx_units) if not u])
        pos = [0 if u else next(rest, 0) for u in in_units]
    return who, pos


def _agree(err, dist):
    # Over ranks, every rank learns whether any found bad data and all raise
    # together: none is left waiting in a collective.
    if dist is not None:
        err = dist.agree(err)
    if err is not None:
        raise err


def _check_index(idx, size, lo, label, who, idx_units, in_units, at, dist=None):
    bad = _first_bad(idx, lo, size)
    _agree(None if bad is None else _index_error(bad, idx, size, label, who, idx_units, in_units, at), dist)


def _index_error(bad, idx, size, label, who, idx_units, in_units, at):
    k, value = bad
    who, pos = _position(k, tuple(idx.shape), who, idx_units, in_units)
    where = (
        f"{who}[{', '.join(map(str, pos))}]"
        if who is not None
        else f"index position [{', '.join(map(str, pos))}]"
    )
    dim = f"{label}={size}" if label is not None else f"size {size}"
    return DataError(
        "L6201",
        f"index {value} out of range for {dim} at {where} {at}",
        "indices must lie in 0..size; mask invalid ones first, e.g. take(x, where(valid, target, 0), axis=1)",
    )


def _check_unique(idx, who, idx_units, in_units, at, dist=None):
    dup = _first_dup(idx)
    _agree(None if dup is None else _dup_error(dup, idx, who, idx_units, in_units, at), dist)


def _dup_error(dup, idx, who, idx_units, in_units, at):
    k, value = dup
    who, pos = _position(k, tuple(idx.shape), who, idx_units, in_units)
    where = f"{who}[{', '.join(map(str, pos))}]" if who is not None else f"position {pos}"
    return DataError(
        "L6202",
        f"id {value} appears twice (again at {where}) {at}",
        "ids of a state-table update must be unique within a call",
    )


def _check_assert(cond, message, dist=None):
    failed = _is_concrete(cond) and not bool(cond)
    err = DataError("L6110", message, "the data does not satisfy an `assert` of the program")
    _agree(err if failed else None, dist)


def _shape_txt(shape) -> str:
    return "[" + ", ".join(str(int(n)) for n in shape) + "]"


def _bind_axes(kind, who, shape, axes, dims, bound_by):
    for ax, ((how, what), n) in enumerate(zip(axes, shape)):
        n = int(n)
        if how == "const" and what != n:
            raise DataError(
                "L6106",
                f"{kind} `{who}` axis {ax} has size {n}, but the loss declares {what}",
                "give an array of the declared size",
            )
        if how == "sym":
            if what in dims and dims[what] != n:
                raise DataError(
                    "L6106",
                    f"{kind} `{who}` axis {ax} has size {n}, but {what} = {dims[what]} "
                    f"(bound by {bound_by[what]})",
                    f"every use of {what} must have the same size",
                )
            if what not in dims:
                dims[what] = n
                bound_by[what] = f"`{who}` axis {ax}"


def _ty_txt(dtype, shape) -> str:
    if not shape:
        return dtype
    return dtype + "[" + ", ".join(str(d) for d in shape) + "]"


def _bind(inputs, params, state, dims, input_axes=None, unbound_ok=()):
    """Checks the call against SIGNATURE with the CLI's messages; returns the
    arrays in declaration order (converted where the CLI converts), the param
    values and the bound dims."""
    if not isinstance(inputs, dict):
        raise TypeError(f"`{NAME}`: inputs must be a dict by input name")
    params = dict(params or {})
    state = dict(state or {})
    names = [d["name"] for d in SIGNATURE["inputs"]]
    for n in inputs:
        if n not in names:
            raise DataError(
                "L6103",
                f"unknown input `{n}`",
                f"the inputs of `{NAME}` are: {', '.join(names)}",
            )
    dims = {k: int(v) for k, v in (dims or {}).items()}
    bound_by = {k: "dims=" for k in dims}
    arrays = []
    for decl, axes in zip(SIGNATURE["inputs"], input_axes or _INPUT_AXES):
        n = decl["name"]
        ty = _ty_txt(decl["dtype"], decl["shape"])
        if n not in inputs:
            raise DataError("L6104", f"missing input `{n}` ({ty})", f"pass `{n}` in the inputs")
        x = _convert(inputs[n], decl["dtype"], f"input `{n}`", ty)
        if len(x.shape) != len(decl["shape"]):
            raise DataError(
                "L6106",
                f"input `{n}` has rank {len(x.shape)} (shape {_shape_txt(x.shape)}), "
                f"but the loss declares {ty}",
                "reshape the array to the declared rank",
            )
        _bind_axes("input", n, x.shape, axes, dims, bound_by)
        arrays.append(x)
    pnames = [d["name"] for d in SIGNATURE["params"]]
    for n in params:
        if n not in pnames:
            raise DataError(
                "L6101",
                f"unknown param `{n}`",
                f"the params of `{NAME}` are: {', '.join(pnames)}" if pnames else f"`{NAME}` has no params",
            )
    pvals = []
    for decl in SIGNATURE["params"]:
        v = params.get(decl["name"], decl["default"])
        pvals.append(_param_value(decl, v))
    snames = [d["name"] for d in SIGNATURE["state"]]
    for n in state:
        if n not in snames:
            raise DataError(
                "L6107",
                f"the state has an unknown key `{n}`",
                f"the state of `{NAME}` is: {', '.join(snames)}" if snames else f"`{NAME}` has no state",
            )
    svals = []
    for decl, axes in zip(SIGNATURE["state"], _STATE_AXES):
        n = decl["name"]
        if n not in state or state[n] is None:
            svals.append(None)
            continue
        ty = _ty_txt(decl["dtype"], decl["shape"])
        x = _convert(state[n], decl["dtype"], f"state `{n}`", ty)
        if len(x.shape) != len(decl["shape"]):
            raise DataError(
                "L6108",
                f"state `{n}` has shape {_shape_txt(x.shape)}, but the loss declares {ty}",
                "fix the state, or leave the key out to start from the initial value",
            )
        _bind_axes("state", n, x.shape, axes, dims, bound_by)
        svals.append(x)
    for d in _DIMS:
        if d not in dims and d not in unbound_ok:
            raise DataError(
                "L6109",
                f"the size `{d}` is not bound by any input or state",
                f"pass dims={{'{d}': ...}}, or give the state",
            )
    return arrays, pvals, svals, dims


def _param_value(decl, v):
    d = decl["dtype"]
    n = decl["name"]
    dom = _PARAM_DOMAINS.get(n)
    if dom is not None and _is_concrete(v) and not isinstance(v, bool):
        x = float(v)
        lo, lo_closed, hi, hi_closed, txt = dom
        inside = (x >= lo if lo_closed else x > lo) and (x <= hi if hi_closed else x < hi)
        if not inside:
            shown = repr(v) if isinstance(v, (int, float)) else repr(x)
            raise DataError(
                "L6115",
                f"param `{n}` = {shown} is outside its domain {txt}",
                f"give `{n}` a value in {txt}",
            )
    if _is_array(v):
        return v
    if d == "i64" and isinstance(v, float) and v.is_integer() and abs(v) < 9.0e15:
        v = int(v)
    ok = (
        (d == "i64" and isinstance(v, int) and not isinstance(v, bool))
        or (d == "bool" and (isinstance(v, bool) or v in (0, 1)))
        or (d in ("f32", "f64") and isinstance(v, (int, float)) and not isinstance(v, bool))
    )
    if not ok:
        raise DataError(
            "L6102",
            f"param `{n}` is {d}, but the value given is `{v!r}`",
            {"i64": "give an integer", "bool": "give true or false"}.get(d, "give a number"),
        )
    return bool(v) if d == "bool" else v
