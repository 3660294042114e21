"""Every conformance case of every stdlib loss through the exported torch, jax and
numpy modules: loss, gradients and new state against the independent references,
state carried across the steps of multi-step cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
from conftest import STDLIB, all_cases, check_step, export_module, iter_steps

CASES = all_cases()


def _np_state(state: Dict[str, Any]) -> Dict[str, Any]:
    return {k: np.asarray(v) for k, v in state.items()}


@pytest.mark.parametrize("loss,case", CASES, ids=[f"{a}/{b}" for a, b in CASES])
def test_numpy(loss: str, case: str, export_dir: Path) -> None:
    mod = export_module(STDLIB / f"{loss}.loss", "numpy", export_dir)
    state = None
    for data in iter_steps(loss, case):
        if state is None:
            state = data["state"]
        value, grads, new_state, _ = mod.loss_and_grad(data["inputs"], data["params"], state)
        check_step(value, grads, new_state, data)
        state = _np_state(new_state)


@pytest.mark.parametrize("loss,case", CASES, ids=[f"{a}/{b}" for a, b in CASES])
def test_torch(loss: str, case: str, export_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    mod = export_module(STDLIB / f"{loss}.loss", "torch", export_dir)
    diff = {d["name"] for d in mod.SIGNATURE["inputs"] if d["diff"]}
    state = None
    for data in iter_steps(loss, case):
        if state is None:
            state = {k: torch.as_tensor(np.asarray(v)) for k, v in data["state"].items()}
        inputs = {}
        for k, v in data["inputs"].items():
            t = torch.from_numpy(v.copy())
            inputs[k] = t.requires_grad_(True) if k in diff else t
        value, new_state, _ = mod.loss_fn(inputs, data["params"], state)
        value.backward()
        grads = {k: inputs[k].grad.numpy() for k in diff if inputs[k].grad is not None}
        check_step(value.detach().numpy(), grads, {k: v.numpy() for k, v in new_state.items()}, data)
        state = new_state


def _jax_case(mod: Any, loss: str, case: str, jit: bool) -> None:
    import jax

    diff = [d["name"] for d in mod.SIGNATURE["inputs"] if d["diff"]]
    state = None
    for data in iter_steps(loss, case):
        if state is None:
            state = data["state"]
        inputs = dict(data["inputs"])

        def f(dv: Dict[str, Any], st: Dict[str, Any], rest=inputs, params=data["params"]):
            loss_v, new_state, _ = mod.loss_fn({**rest, **dv}, params, st)
            return loss_v, new_state

        vg = jax.value_and_grad(f, has_aux=True)
        if jit:
            vg = jax.jit(vg)
        (value, new_state), grads = vg({k: inputs[k] for k in diff}, state)
        check_step(
            np.asarray(value),
            {k: np.asarray(v) for k, v in grads.items()},
            {k: np.asarray(v) for k, v in new_state.items()},
            data,
        )
        state = {k: np.asarray(v) for k, v in new_state.items()}


@pytest.mark.parametrize("loss,case", CASES, ids=[f"{a}/{b}" for a, b in CASES])
def test_jax(loss: str, case: str, export_dir: Path) -> None:
    """jax.value_and_grad, 32-bit (jax_enable_x64 off)."""
    pytest.importorskip("jax")
    mod = export_module(STDLIB / f"{loss}.loss", "jax", export_dir)
    _jax_case(mod, loss, case, jit=False)


@pytest.mark.parametrize("loss,case", CASES, ids=[f"{a}/{b}" for a, b in CASES])
def test_jax_jit_x64(loss: str, case: str, export_dir: Path) -> None:
    """jax.jit(jax.value_and_grad(...)) with jax_enable_x64 on."""
    jax = pytest.importorskip("jax")
    mod = export_module(STDLIB / f"{loss}.loss", "jax", export_dir)
    with jax.enable_x64(True):
        _jax_case(mod, loss, case, jit=True)
