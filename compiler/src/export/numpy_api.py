# ---- the NumPy API (EXPORT.md)


def _working_dtype(arrays):
    floats = [x.dtype for x in arrays if np.issubdtype(x.dtype, np.floating)]
    return np.float64 if floats and all(d == np.float64 for d in floats) else np.float32


def _typed(values, decls, F):
    out = []
    for decl, v in zip(decls, values):
        dtype = {"f32": F, "f64": np.float64, "i64": np.int64, "bool": np.bool_}[decl["dtype"]]
        out.append(np.asarray(v, dtype=dtype))
    return out


def _state_dims():
    out = []
    for axes in _STATE_AXES:
        for how, what in axes:
            if how == "sym" and what not in out:
                out.append(what)
    return out


def init_state(dims=None, device=None, params=None):
    """The initial state as a dict of arrays (`dims` binds the sizes of state tables)."""
    dims = {k: int(v) for k, v in (dims or {}).items()}
    for d in _state_dims():
        if d not in dims:
            raise DataError(
                "L6109", f"the size `{d}` of a state table is not bound", f"pass dims={{'{d}': ...}}"
            )
    pvals = [_param_value(d, (params or {}).get(d["name"], d["default"])) for d in SIGNATURE["params"]]
    with np.errstate(all="ignore"):
        vals = _init_values(
            *_typed(pvals, SIGNATURE["params"], np.float32), _dims=dims, _dev=None, _F=np.float32, _dist=None
        )
    return {d["name"]: v for d, v in zip(SIGNATURE["state"], _typed(vals, SIGNATURE["state"], np.float32))}


def _call(inputs, params, state, checks, dims, grads):
    arrays, pvals, svals, bound = _bind(inputs, params, state, dims)
    F = _working_dtype(arrays)
    args = [x.astype(F) if d["dtype"] == "f32" else x for d, x in zip(SIGNATURE["inputs"], arrays)]
    pts = _typed(pvals, SIGNATURE["params"], F)
    with np.errstate(all="ignore"):
        if any(v is None for v in svals):
            init = _init_values(*pts, _dims=bound, _dev=None, _F=F, _dist=None)
            svals = [v if v is not None else i for v, i in zip(svals, init)]
        sts = _typed(svals, SIGNATURE["state"], F)
        loss, new_state, reports, saved = _forward(
            *args, *pts, *sts, _dims=bound, _checks=checks, _dev=None, _F=F, _dist=None
        )
        g = _backward(*saved, _dims=bound, _dev=None, _F=F, _dist=None) if grads else ()
    new_state = dict(
        zip([d["name"] for d in SIGNATURE["state"]], _typed(new_state, SIGNATURE["state"], np.float32))
    )
    reports = {k: np.asarray(v) for k, v in zip(SIGNATURE["reports"], reports)}
    gd = {}
    for k, gr in zip(_DIFF, g):
        decl = SIGNATURE["inputs"][k]
        gd[decl["name"]] = np.asarray(gr).astype(arrays[k].dtype)
    return np.asarray(loss, dtype=F), gd, new_state, reports


def loss_fn(inputs, params=None, state=None, *, checks=True, dims=None):
    """(loss, new_state, reports) of one call."""
    loss, _, new_state, reports = _call(inputs, params, state, checks, dims, False)
    return loss, new_state, reports


def loss_and_grad(inputs, params=None, state=None, *, checks=True, dims=None):
    """(loss, grads, new_state, reports): grads by `diff` input name, in each input's dtype."""
    return _call(inputs, params, state, checks, dims, True)
