"""`losslang.jax.loss_fn` on the CPU backend (the JIT through a custom_vjp over
pure_callback): conformance cases, `jax.grad`, `jax.jit`, state and reports."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from conftest import STDLIB, all_cases, check_step, iter_steps

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
import losslang as ll  # noqa: E402
import losslang.jax as lj  # noqa: E402

CASES = all_cases()


def _fn(loss: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ll.LossWarning)
        return lj.loss_fn(STDLIB / f"{loss}.loss")


@pytest.mark.parametrize("loss,case", CASES, ids=[f"{a}/{b}" for a, b in CASES])
def test_conformance_grad_and_jit(loss: str, case: str) -> None:
    fn = _fn(loss)
    state = None
    for data in iter_steps(loss, case):
        if state is None:
            state = data["state"] or None
        inputs = {k: jnp.asarray(v) for k, v in data["inputs"].items()}
        params = data["params"]

        def scalar(x: Any, inputs: Any = inputs, params: Any = params, state: Any = state) -> Any:
            merged = {**inputs, **x}
            loss_v, new_state, reports = fn(merged, params, state)
            return loss_v, (new_state, reports)

        diff = {k: v for k, v in inputs.items() if jnp.issubdtype(v.dtype, jnp.floating)}
        (value, (new_state, _)), grads = jax.jit(jax.value_and_grad(scalar, has_aux=True))(diff)
        wanted = set(data["grads"])
        check_step(
            np.asarray(value),
            {k: np.asarray(g) for k, g in grads.items() if k in wanted},
            {k: np.asarray(v) for k, v in new_state.items()},
            data,
        )
        state = {k: np.asarray(v) for k, v in new_state.items()}


def test_grad_matches_numpy_loss() -> None:
    fn = lj.loss_fn(ll.stdlib("focal"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 10), dtype=np.float32)
    t = rng.integers(0, 10, 32)
    ref = ll.Loss(ll.stdlib("focal"))(x, t)
    g = jax.grad(lambda x: 3.0 * fn({"logits": x, "target": t})[0])(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(g), 3.0 * ref.grads["logits"], rtol=1e-6, atol=1e-9)
    loss, state, reports = jax.jit(lambda x: fn({"logits": x, "target": t}))(x)
    assert abs(float(loss) - ref.loss) < 1e-6 and state == {} and reports == {}


def test_errors() -> None:
    fn = lj.loss_fn(ll.stdlib("focal"))
    x = np.ones((8, 4), np.float32)
    with pytest.raises(ll.DataError, match="missing input"):
        fn({"logits": x})
    with pytest.raises(ll.DataError, match="unknown input"):
        fn({"logits": x, "target": np.zeros(8, np.int64), "nope": x})
