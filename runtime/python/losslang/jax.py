"""losslang from JAX: `loss_fn(path)` returns `fn(inputs, params=None, state=None)`
→ `(loss, new_state, reports)`, a pure function that `jax.jit` and `jax.grad`
accept.

On the CPU backend it is a `jax.custom_vjp` whose forward and backward are one call
of the JIT through `jax.pure_callback` (the forward writes the gradients the
backward scales); on any other backend it is the exported jax code
(`lossc export --target jax`), which runs on that device.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from . import _NP_DTYPE, Program, _as_program, _data_error, as_array
from ._losslang import Runner

__all__ = ["loss_fn"]

Fn = Callable[..., Tuple[Any, Dict[str, Any], Dict[str, Any]]]


def loss_fn(program: Union[Program, str, "os.PathLike[str]"], threads: int = 1) -> Fn:
    """The loss as a JAX function of a dict of inputs (and params and state)."""
    prog = _as_program(program)
    inner = prog._inner
    runner = Runner(inner, "jit", threads)
    names: List[str] = [n for n, _ in inner.input_decls]
    diff: List[str] = list(inner.grad_names)
    states: List[Tuple[str, str]] = list(inner.state_decls)
    report_names: List[str] = list(prog.signature["reports"])
    exported: Dict[str, Any] = {}

    def export_ns() -> Dict[str, Any]:
        if not exported:
            text = prog.export("jax")
            exported["__name__"] = f"losslang_exported_{prog.name}"
            exec(compile(text, f"<losslang export of {prog.name}>", "exec"), exported)
        return exported

    def fn(
        inputs: Mapping[str, Any],
        params: Optional[Mapping[str, Any]] = None,
        state: Optional[Mapping[str, Any]] = None,
    ) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
        if jax.default_backend() != "cpu":
            return export_ns()["loss_fn"](
                dict(inputs), dict(params or {}), None if state is None else dict(state)
            )
        plist = [(k, v.item() if hasattr(v, "item") else v) for k, v in (params or {}).items()]
        for n in inputs:
            if n not in names:
                raise _data_error(
                    "L6103", f"unknown input `{n}`", f"the inputs of `{prog.name}` are: {', '.join(names)}"
                )
        for n in names:
            if n not in inputs:
                raise _data_error("L6104", f"missing input `{n}`")
        args = [jnp.asarray(inputs[n]) for n in names]
        if state is None:
            state = {}
        if any(n not in state for n, _ in states):
            # Only the inputs' shapes bind the dims of the initial state.
            shapes = [
                (n, np.broadcast_to(np.zeros((), _host_dtype(a)), a.shape)) for n, a in zip(names, args)
            ]
            init = dict(runner.init_state(shapes, plist))
            state = {**init, **dict(state)}
        sts = [jnp.asarray(state[n]) for n, _ in states]
        # Shapes of the reports: the exported module's trace, never run.
        _, _, rep_sd = jax.eval_shape(
            lambda i, s: export_ns()["loss_fn"](i, dict(plist), s),
            dict(zip(names, args)),
            {n: v for (n, _), v in zip(states, sts)},
        )
        rep_sd = [rep_sd[r] for r in report_names]
        n_in = len(names)

        def host(with_grad: bool) -> Callable[..., Any]:
            def cb(*arrays: Any) -> Any:
                ins = [(n, as_array(n, np.asarray(a))) for n, a in zip(names, arrays[:n_in])]
                st = [
                    (n, np.asarray(a, dtype=_NP_DTYPE[d], order="C"))
                    for (n, d), a in zip(states, arrays[n_in:])
                ]
                st_out = [np.empty_like(a) for _, a in st]
                by_name = dict(ins)
                grads = [np.empty(by_name[n].shape, by_name[n].dtype) for n in diff] if with_grad else None
                loss, reps = runner.call(ins, plist, st, grads, st_out)
                reps_d = dict(reps)
                out = (
                    np.asarray(loss, np.float32),
                    tuple(np.asarray(o, dtype=s.dtype) for o, s in zip(st_out, sts)),
                    tuple(
                        np.asarray(reps_d[r], dtype=sd.dtype).reshape(sd.shape)
                        for r, sd in zip(report_names, rep_sd)
                    ),
                )
                if with_grad:
                    arg_of = dict(zip(names, args))
                    return out + (
                        tuple(np.asarray(g, dtype=arg_of[n].dtype) for n, g in zip(diff, grads or [])),
                    )
                return out

            return cb

        base = (
            jax.ShapeDtypeStruct((), jnp.float32),
            tuple(jax.ShapeDtypeStruct(s.shape, s.dtype) for s in sts),
            tuple(jax.ShapeDtypeStruct(sd.shape, sd.dtype) for sd in rep_sd),
        )
        arg_of = dict(zip(names, args))
        grad_sd = tuple(jax.ShapeDtypeStruct(arg_of[n].shape, arg_of[n].dtype) for n in diff)

        @jax.custom_vjp
        def core(*xs: Any) -> Any:
            return jax.pure_callback(host(False), base, *xs, vmap_method="sequential")

        def core_fwd(*xs: Any) -> Any:
            loss, ns, reps, grads = jax.pure_callback(
                host(True), base + (grad_sd,), *xs, vmap_method="sequential"
            )
            return (loss, ns, reps), grads

        def core_bwd(grads: Any, cot: Any) -> Any:
            # The compiler's gradient scaled by the loss's cotangent; no gradient
            # flows through new state or reports.
            g = cot[0]
            out: List[Any] = [None] * (n_in + len(sts))
            for n, gr in zip(diff, grads):
                k = names.index(n)
                out[k] = (gr * g).astype(gr.dtype)
            return tuple(out)

        core.defvjp(core_fwd, core_bwd)
        loss, ns, reps = core(*args, *sts)
        return loss, {n: v for (n, _), v in zip(states, ns)}, dict(zip(report_names, reps))

    return fn


def _host_dtype(a: Any) -> Any:
    """The dtype the command line would read for an array of `a`'s dtype."""
    kind = np.dtype(a.dtype).kind
    if kind in "iu":
        return np.int64
    if kind == "b":
        return np.bool_
    return np.float32 if np.dtype(a.dtype).itemsize <= 4 else np.float64
