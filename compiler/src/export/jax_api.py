# ---- the JAX API (EXPORT.md)


def _working_dtype(arrays):
    floats = [x.dtype for x in arrays if jnp.issubdtype(x.dtype, jnp.floating)]
    if floats and all(d == jnp.float64 for d in floats):
        return jnp.float64
    return jnp.float32


def _typed(values, decls, F):
    out = []
    for decl, v in zip(decls, values):
        dtype = {"f32": F, "f64": _f64(), "i64": _i64(), "bool": jnp.bool_}[decl["dtype"]]
        out.append(jnp.asarray(v, dtype=dtype))
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _core(meta, *args):
    dims, checks, F, dtypes = meta
    loss, new_state, reports, _ = _forward(
        *args, _dims=dict(dims), _checks=checks, _dev=None, _F=F, _dist=None
    )
    return loss, tuple(new_state), tuple(reports)


def _core_fwd(meta, *args):
    dims, checks, F, dtypes = meta
    loss, new_state, reports, saved = _forward(
        *args, _dims=dict(dims), _checks=checks, _dev=None, _F=F, _dist=None
    )
    return (loss, tuple(new_state), tuple(reports)), tuple(saved)


def _core_bwd(meta, res, cot):
    # the compiler's gradient graph, scaled by the loss's cotangent; no gradient
    # flows through new state or reports
    dims, checks, F, dtypes = meta
    saved = res
    g_loss = cot[0]
    grads = _backward(*saved, _dims=dict(dims), _dev=None, _F=F, _dist=None)
    out = [None] * len(dtypes)
    for k, g in zip(_DIFF, grads):
        out[k] = (g * g_loss).astype(dtypes[k])
    return tuple(out)


_core.defvjp(_core_fwd, _core_bwd)


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
    vals = _init_values(
        *_typed(pvals, SIGNATURE["params"], jnp.float32), _dims=dims, _dev=None, _F=jnp.float32, _dist=None
    )
    return {d["name"]: v for d, v in zip(SIGNATURE["state"], _typed(vals, SIGNATURE["state"], jnp.float32))}


def loss_fn(inputs, params=None, state=None, *, checks=True, dims=None):
    """(loss, new_state, reports): a pure function of arrays, `jax.jit`-able,
    differentiable in the `diff` inputs with the compiler's gradient."""
    arrays, pvals, svals, bound = _bind(inputs, params, state, dims)
    F = _working_dtype(arrays)
    args = [x.astype(F) if d["dtype"] == "f32" else x for d, x in zip(SIGNATURE["inputs"], arrays)]
    pts = _typed(pvals, SIGNATURE["params"], F)
    if any(v is None for v in svals):
        init = _init_values(*pts, _dims=bound, _dev=None, _F=F, _dist=None)
        svals = [v if v is not None else i for v, i in zip(svals, init)]
    sts = _typed(svals, SIGNATURE["state"], F)
    # static: sizes, flags and dtypes (as names) key the trace
    meta = (tuple(sorted(bound.items())), bool(checks), F, tuple(str(a.dtype) for a in args + pts + sts))
    loss, new_state, reports = _core(meta, *args, *pts, *sts)
    new_state = dict(
        zip([d["name"] for d in SIGNATURE["state"]], _typed(new_state, SIGNATURE["state"], jnp.float32))
    )
    return loss, new_state, dict(zip(SIGNATURE["reports"], reports))
