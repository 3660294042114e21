"""losslang from PyTorch: `LossModule`, a `torch.nn.Module` around a compiled loss.

CPU tensors run through the JIT on their own memory (backward is the compiled
gradient, computed in the same call); tensors on any other device run the
exported torch code (`lossc export --target torch`) on that device.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import _NP_DTYPE, DataError, Program, _as_program, _data_error, as_array
from ._losslang import Runner

__all__ = ["LossModule"]

_WIDEN = (torch.float16, torch.bfloat16)


class _JitCall(torch.autograd.Function):
    """The JIT's forward; its backward scales the gradients the forward wrote."""

    @staticmethod
    def forward(ctx: Any, run: Any, *tensors: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        loss, grads = run(tensors)
        ctx.slots = [g is not None for g in grads]
        ctx.save_for_backward(*[g for g in grads if g is not None])
        return torch.tensor(loss, dtype=torch.float32)

    @staticmethod
    def backward(ctx: Any, gout: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        saved = iter(ctx.saved_tensors)
        out: List[Optional[torch.Tensor]] = [None]
        for has in ctx.slots:
            if has:
                g = next(saved)
                out.append(g * gout.to(g.dtype))
            else:
                out.append(None)
        return tuple(out)


class LossModule(torch.nn.Module):
    """A compiled loss as a module. Params are attributes (changing one never
    recompiles); state lives in registered buffers, updated by calls in training
    mode only; `last_reports` holds the reports of the last call."""

    def __init__(
        self, program: Union[Program, str, "os.PathLike[str]"], threads: int = 1, **params: Any
    ) -> None:
        super().__init__()
        self.program = _as_program(program)
        inner = self.program._inner
        sig = self.program.signature
        pnames = [d["name"] for d in sig["params"]]
        for n in params:
            if n not in pnames:
                raise _data_error(
                    "L6101",
                    f"unknown param `{n}`",
                    f"the params of `{self.program.name}` are: {', '.join(pnames)}",
                )
        self._pnames = pnames
        for d in sig["params"]:
            setattr(self, d["name"], params.get(d["name"], d["default"]))
        self._inputs: List[str] = [n for n, _ in inner.input_decls]
        self._grad_names = set(inner.grad_names)
        self._grad_dtype = {n: torch.float64 if d == "f64" else torch.float32 for n, d in inner.input_decls}
        self._states: List[str] = [n for n, _ in inner.state_decls]
        self._state_dtype = {n: _NP_DTYPE[d] for n, d in inner.state_decls}
        for n in self._states:
            # Sized by the first call (a table state's size comes from the data).
            self.register_buffer(n, None)
        self._runner = Runner(inner, "jit", threads)
        self._exported: Optional[Dict[str, Any]] = None
        self.last_reports: Dict[str, Any] = {}

    def _params(self) -> List[Tuple[str, Any]]:
        return [(n, getattr(self, n)) for n in self._pnames]

    def _gather(self, args: Sequence[Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
        names = self._inputs
        if len(args) > len(names):
            raise TypeError(
                f"`{self.program.name}` takes {len(names)} inputs ({', '.join(names)}), got {len(args)}"
            )
        inputs = dict(zip(names, args))
        for k, v in kwargs.items():
            if k in inputs:
                raise TypeError(f"input `{k}` given twice")
            inputs[k] = v
        return inputs

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        inputs = self._gather(args, kwargs)
        devices: Dict[str, List[str]] = {}
        for n, v in inputs.items():
            if isinstance(v, torch.Tensor):
                devices.setdefault(str(v.device), []).append(n)
        if len(devices) > 1:
            where = "; ".join(f"{', '.join(ns)} on {d}" for d, ns in devices.items())
            raise ValueError(f"the inputs of `{self.program.name}` are on different devices: {where}")
        device = next(iter(devices), "cpu")
        if device == "cpu":
            return self._forward_jit(inputs)
        return self._forward_exported(inputs)

    # -- CPU: the JIT on the tensors' memory --------------------------------

    def _forward_jit(self, inputs: Dict[str, Any]) -> torch.Tensor:
        order = list(inputs)
        tensors = [
            inputs[n] if isinstance(inputs[n], torch.Tensor) else torch.as_tensor(inputs[n]) for n in order
        ]
        need = torch.is_grad_enabled() and any(
            t.requires_grad for n, t in zip(order, tensors) if n in self._grad_names
        )

        def run(ts: Sequence[torch.Tensor]) -> Tuple[float, List[Optional[torch.Tensor]]]:
            arrays = []
            for n, t in zip(order, ts):
                t = t.detach()
                if t.dtype in _WIDEN:
                    t = t.float()
                arrays.append((n, as_array(n, t.contiguous().numpy())))
            params = self._params()
            state = [(n, getattr(self, n)) for n in self._states]
            if any(s is None for _, s in state):
                init = dict(self._runner.init_state(arrays, params))
                state = [(n, torch.from_numpy(init[n]) if s is None else s) for n, s in state]
            # A state set by hand (from JSON, say) is converted to its declared dtype once.
            state_np = [
                (n, np.asarray(s.detach().numpy(), dtype=self._state_dtype[n], order="C")) for n, s in state
            ]
            state_out = [np.empty_like(a) for _, a in state_np]
            grads: List[Optional[torch.Tensor]] = [None] * len(order)
            outs = []
            if need:
                by_name = dict(arrays)
                for n in self._runner_grad_order():
                    a = by_name.get(n)
                    g = torch.empty(a.shape if a is not None else (), dtype=self._grad_dtype[n])
                    outs.append(g)
                    if n in order:
                        grads[order.index(n)] = g
            loss, reports = self._runner.call(
                arrays, params, state_np, [g.numpy() for g in outs] if need else None, state_out
            )
            if self.training:
                for (n, _), a in zip(state_np, state_out):
                    self._buffers[n] = torch.from_numpy(a)
            elif any(self._buffers[n] is None for n in self._states):
                # Eval mode leaves the state alone, but the initial state is the state.
                for n, s in state:
                    self._buffers[n] = s.detach()
            self.last_reports = {
                k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in reports
            }
            for k, (n, t) in enumerate(zip(order, ts)):
                g = grads[k]
                if g is not None and g.dtype != t.dtype:
                    grads[k] = g.to(t.dtype)
            return loss, grads

        if not need:
            with torch.no_grad():
                loss, _ = run(tensors)
            return torch.tensor(loss, dtype=torch.float32)
        return _JitCall.apply(run, *tensors)

    def _runner_grad_order(self) -> List[str]:
        return list(self.program._inner.grad_names)

    # -- other devices: the exported torch module ---------------------------

    def _forward_exported(self, inputs: Dict[str, Any]) -> torch.Tensor:
        if self._exported is None:
            ns: Dict[str, Any] = {"__name__": f"losslang_exported_{self.program.name}"}
            text = self.program.export("torch")
            exec(compile(text, f"<losslang export of {self.program.name}>", "exec"), ns)
            self._exported = ns
        state = {n: getattr(self, n) for n in self._states}
        state = {k: v for k, v in state.items() if v is not None}
        try:
            loss, new_state, reports = self._exported["loss_fn"](inputs, dict(self._params()), state)
        except ValueError as e:
            if isinstance(e, DataError):
                raise
            err = DataError(str(e))
            err.code = getattr(e, "code", None)
            err.help = getattr(e, "help", None)
            raise err from e
        if self.training:
            for k, v in new_state.items():
                self._buffers[k] = v.detach()
        self.last_reports = reports
        return loss
