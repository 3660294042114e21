"""losslang from Python: compile `.loss` programs and call them on NumPy arrays.

```python
import losslang as ll

f = ll.Loss("stdlib/focal.loss", gamma=2.0)
r = f(logits, target)  # r.loss, r.grads["logits"], r.state, r.reports
```

`losslang.torch` and `losslang.jax` build on the same compiled programs.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from ._losslang import (
    CompiledProgram,
    CompileError,
    DataError,
    Runner,
    compile_source,
    stdlib_names,
    stdlib_source,
)

__all__ = [
    "CompileError",
    "DataError",
    "Loss",
    "LossWarning",
    "Program",
    "Result",
    "compile",
    "load",
    "stdlib",
]

__version__ = "0.1.0"


class LossWarning(UserWarning):
    """A warning or note of the checker, with the command line's rendered text."""


class Program:
    """A compiled `.loss` program (from `load`, `compile` or `stdlib`)."""

    def __init__(self, inner: CompiledProgram) -> None:
        self._inner = inner
        self._signature: Optional[Dict[str, Any]] = None
        for text in inner.warnings:
            warnings.warn(text, LossWarning, stacklevel=3)

    @property
    def name(self) -> str:
        """The loss's name."""
        return self._inner.name

    @property
    def signature(self) -> Dict[str, Any]:
        """Inputs, params, state and reports: the layout of SIGNATURE in the exported modules."""
        if self._signature is None:
            # The exported NumPy module holds the signature as a literal; reading
            # it there keeps one source of truth for its layout.
            ns: Dict[str, Any] = {"__name__": f"losslang_signature_{self.name}"}
            exec(compile_text(self._inner.export("numpy"), self._inner.source_name), ns)
            self._signature = ns["SIGNATURE"]
        return self._signature

    def explain(self) -> str:
        """`lossc explain`: where each input's gradient comes from."""
        return self._inner.explain()

    def emit(self, stage: str = "opt") -> str:
        """`lossc emit --stage STAGE`: ir | grad | opt | sched | clif | candle."""
        return self._inner.emit(stage)

    def export(self, target: str) -> str:
        """`lossc export --target TARGET`: the module's source (torch | jax | numpy)."""
        return self._inner.export(target)

    def __repr__(self) -> str:
        return f"<losslang.Program {self.name} from {self._inner.source_name}>"


def compile_text(text: str, name: str) -> Any:
    """Python's own `compile` (shadowed below by the loss compiler)."""
    import builtins

    return builtins.compile(text, name, "exec")


def load(path: Union[str, "os.PathLike[str]"], loss: Optional[str] = None) -> Program:
    """Compiles a `.loss` file; `loss` picks an item of a file with several."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise FileNotFoundError(f"cannot read {p}: {e.strerror}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        err = CompileError(f"{p} is not UTF-8 text (invalid byte at offset {e.start})")
        err.code = "L1005"
        err.diagnostics = [("L1005", "error", str(err), 1, 1)]
        raise err from None
    return Program(compile_source(text, p, loss))


def compile(text: str, name: str = "inline.loss", loss: Optional[str] = None) -> Program:  # noqa: A001
    """Compiles `.loss` source text (`name` appears in diagnostics; `use` paths resolve next to it)."""
    return Program(compile_source(text, name, loss))


def stdlib(name: str) -> Program:
    """A loss of the embedded standard library, e.g. `stdlib("focal")`."""
    text = stdlib_source(name)
    if text is None:
        raise ValueError(f"the standard library has no loss `{name}`: one of {', '.join(stdlib_names())}")
    return Program(compile_source(text, f"stdlib/{name}.loss", None))


def _as_program(p: Union[Program, str, "os.PathLike[str]"]) -> Program:
    if isinstance(p, Program):
        return p
    return load(p)


_SUPPORTED = "supported dtypes are float32/float64/float16, int8..int64, uint8..uint64 and bool"
_I64_MAX = np.iinfo(np.int64).max


def as_array(name: str, value: Any) -> np.ndarray:
    """An input as the command line reads a .npy file: float16 widened to float32,
    every integer type to int64 (uint64 only when each value fits), bool kept;
    C-contiguous, aligned arrays of float32/float64/int64/bool are not copied."""
    a = value if type(value) is np.ndarray else np.asarray(value)
    dt = a.dtype
    kind = dt.kind
    if dt == np.float32 or dt == np.float64 or dt == np.int64 or dt == np.bool_:
        target = dt
    elif kind == "f" and dt.itemsize == 2:
        target = np.dtype(np.float32)
    elif kind == "i" or (kind == "u" and dt.itemsize < 8):
        target = np.dtype(np.int64)
    elif kind == "u":
        if a.size and int(a.max()) > _I64_MAX:
            i = int(np.argmax(a.reshape(-1) > _I64_MAX))
            raise _data_error(
                "L6101",
                f"input `{name}`: element {i} is {int(a.reshape(-1)[i])}, which does not fit in i64 (uint64 data)",
            )
        target = np.dtype(np.int64)
    else:
        raise _data_error("L6101", f"input `{name}` has dtype {dt}: {_SUPPORTED}")
    flags = a.flags
    if target == dt and flags.c_contiguous and flags.aligned:
        return a
    # asarray, not ascontiguousarray: the latter makes a 0-d array 1-d.
    return np.asarray(a, dtype=target, order="C")


def _data_error(code: str, message: str, help: Optional[str] = None) -> DataError:  # noqa: A002
    e = DataError(message)
    e.code = code
    e.help = help
    return e


_NP_DTYPE = {"f32": np.float32, "f64": np.float64, "i64": np.int64, "bool": np.bool_}


class Result:
    """One call's results. `grads` holds arrays the `Loss` reuses on its next call
    (copy one to keep it); `state` is the state after the call."""

    __slots__ = ("grads", "loss", "reports", "state")

    def __init__(
        self, loss: float, grads: Dict[str, np.ndarray], state: Dict[str, Any], reports: Dict[str, Any]
    ):
        self.loss = loss
        self.grads = grads
        self.state = state
        self.reports = reports

    def __repr__(self) -> str:
        return f"Result(loss={self.loss!r}, grads={list(self.grads)}, state={list(self.state)}, reports={self.reports!r})"


class Loss:
    """A compiled loss bound to a backend (`jit`, `interp` or `candle`).

    `f(x, y, grad=True)` takes NumPy arrays by position (declaration order) or by
    name and returns a `Result`. State is carried from call to call; `f.params`
    changes take effect on the next call without recompiling.
    """

    def __init__(
        self,
        program: Union[Program, str, "os.PathLike[str]"],
        backend: str = "jit",
        threads: int = 1,
        **params: Any,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.program = _as_program(program)
        inner = self.program._inner
        self.backend = backend
        self.threads = threads
        self._runner = Runner(inner, backend, threads)
        self._inputs: List[str] = [n for n, _ in inner.input_decls]
        self._grad_names: List[str] = list(inner.grad_names)
        self._grad_dtype = {n: _NP_DTYPE[d] for n, d in inner.input_decls}
        self._states: List[Tuple[str, Any]] = [(n, _NP_DTYPE[d]) for n, d in inner.state_decls]
        self.params: Dict[str, Any] = dict(params)
        self._state: Optional[Dict[str, np.ndarray]] = None
        self._spare: List[np.ndarray] = []
        self._grads: Dict[str, np.ndarray] = {}

    # -- state -------------------------------------------------------------

    @property
    def state(self) -> Dict[str, np.ndarray]:
        """The state the next call reads (copies); empty before the first call."""
        if self._state is None:
            return {}
        return {k: v.copy() for k, v in self._state.items()}

    @state.setter
    def state(self, value: Mapping[str, Any]) -> None:
        decl = dict(self._states)
        new: Dict[str, np.ndarray] = {}
        for k, v in value.items():
            if k not in decl:
                have = ", ".join(decl) or "none"
                raise _data_error(
                    "L6107", f"unknown state `{k}`", f"the state of `{self.program.name}` is: {have}"
                )
            new[k] = np.array(v, dtype=decl[k], order="C", copy=True)
        self._state = new
        self._spare = []

    def reset_state(self) -> None:
        """Starts again from the initial state."""
        self._state = None
        self._spare = []

    # -- calls ---------------------------------------------------------------

    def __call__(
        self, *args: Any, grad: bool = True, out: Optional[Mapping[str, np.ndarray]] = None, **kwargs: Any
    ) -> Result:
        names = self._inputs
        if len(args) > len(names):
            raise TypeError(
                f"`{self.program.name}` takes {len(names)} inputs ({', '.join(names)}), {len(args)} were given"
            )
        inputs = [(n, as_array(n, a)) for n, a in zip(names, args)]
        for n, a in kwargs.items():
            inputs.append((n, as_array(n, a)))
        params = list(self.params.items())
        runner = self._runner
        state = self._state
        if state is None or len(state) != len(self._states):
            init = dict(runner.init_state(inputs, params))
            if state:
                init.update(state)
            state = self._state = init
            self._spare = []
        # The backends take the state arrays in declaration order.
        state_in = [(n, state[n]) for n, _ in self._states]
        spare = self._spare
        if len(spare) != len(state_in) or any(s.shape != v.shape for s, (_, v) in zip(spare, state_in)):
            spare = self._spare = [np.empty_like(v) for _, v in state_in]
        grads = self._grad_arrays(inputs, out) if grad else None
        loss, reports = runner.call(
            inputs, params, state_in, None if grads is None else list(grads.values()), spare
        )
        # The arrays just written become the state; the old ones the next call's output.
        new_state = {n: a for (n, _), a in zip(state_in, spare)}
        self._spare = [a for _, a in state_in]
        self._state = new_state
        return Result(
            loss,
            grads if grads is not None else {},
            {
                k: (float(v) if v.ndim == 0 and v.dtype.kind == "f" else v.copy())
                for k, v in new_state.items()
            },
            dict(reports),
        )

    def _grad_arrays(
        self, inputs: List[Tuple[str, np.ndarray]], out: Optional[Mapping[str, np.ndarray]]
    ) -> Dict[str, np.ndarray]:
        shapes = {n: a.shape for n, a in inputs}
        grads: Dict[str, np.ndarray] = {}
        for n in self._grad_names:
            shape = shapes.get(n)
            if shape is None:
                # The call fails on the missing input, naming it.
                shape = ()
            if out is not None and n in out:
                g = out[n]
                if not isinstance(g, np.ndarray) or g.shape != shape or g.dtype != self._grad_dtype[n]:
                    raise _data_error(
                        "L6114",
                        f"out[{n!r}] must be a {np.dtype(self._grad_dtype[n]).name} array of shape {shape}",
                    )
            else:
                g = self._grads.get(n)
                if g is None or g.shape != shape:
                    g = self._grads[n] = np.empty(shape, dtype=self._grad_dtype[n])
            grads[n] = g
        return grads

    def __repr__(self) -> str:
        return f"<losslang.Loss {self.program.name} backend={self.backend} threads={self.threads}>"
