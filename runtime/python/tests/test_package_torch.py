"""`losslang.torch.LossModule`: conformance on CPU tensors through the JIT, a
training loop equal to the same loop with `F.cross_entropy`, state buffers, and
errors."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from conftest import STDLIB, all_cases, check_step, iter_steps

torch = pytest.importorskip("torch")
import losslang as ll  # noqa: E402
import losslang.torch as lt  # noqa: E402

CASES = all_cases()


def _module(loss: str, **params: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ll.LossWarning)
        return lt.LossModule(STDLIB / f"{loss}.loss", **params)


@pytest.mark.parametrize("loss,case", CASES, ids=[f"{a}/{b}" for a, b in CASES])
def test_conformance_cpu(loss: str, case: str) -> None:
    crit = None
    for data in iter_steps(loss, case):
        if crit is None:
            crit = _module(loss, **data["params"])
            for k, v in data["state"].items():
                setattr(crit, k, torch.as_tensor(np.asarray(v)))
        diff = set(crit.program._inner.grad_names)
        inputs = {}
        for k, v in data["inputs"].items():
            t = torch.from_numpy(v.copy())
            inputs[k] = t.requires_grad_(True) if k in diff and t.is_floating_point() else t
        value = crit(**inputs)
        if value.requires_grad:
            value.backward()
        grads = {k: inputs[k].grad.numpy() for k in diff if inputs[k].grad is not None}
        state = {k: getattr(crit, k).numpy() for k in crit._states}
        check_step(value.detach().numpy(), grads, state, data)


def test_training_loop_matches_f_cross_entropy() -> None:
    torch.manual_seed(0)
    n, d, c = 64, 20, 10
    x = torch.randn(n, d)
    y = torch.randint(0, c, (n,))
    ref = torch.nn.Linear(d, c)
    mine = torch.nn.Linear(d, c)
    mine.load_state_dict(ref.state_dict())
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    opt_mine = torch.optim.SGD(mine.parameters(), lr=0.5)
    crit = lt.LossModule(ll.stdlib("cross_entropy"))
    weight = torch.ones(c)
    for step in range(20):
        opt_ref.zero_grad()
        a = torch.nn.functional.cross_entropy(ref(x), y)
        a.backward()
        opt_ref.step()
        opt_mine.zero_grad()
        b = crit(mine(x), y, weight)
        b.backward()
        opt_mine.step()
        assert abs(a.item() - b.item()) <= 1e-5, f"step {step}: {a.item()} vs {b.item()}"
        for p, q in zip(ref.parameters(), mine.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-5)


def test_zero_copy_gradient_and_no_grad() -> None:
    crit = lt.LossModule(ll.stdlib("focal"), gamma=2.0)
    x = torch.randn(32, 10, requires_grad=True)
    t = torch.randint(0, 10, (32,))
    loss = crit(x, t)
    loss.backward()
    ref = ll.Loss(ll.stdlib("focal"), gamma=2.0)(x.detach().numpy(), t.numpy())
    assert abs(loss.item() - ref.loss) < 1e-6
    np.testing.assert_array_equal(x.grad.numpy(), ref.grads["logits"])
    (2 * crit(x, t)).backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 * ref.grads["logits"], rtol=1e-6)
    with torch.no_grad():
        assert not crit(x, t).requires_grad
    crit.gamma = 0.0
    assert crit(x, t).item() != loss.item()


def test_state_buffers_training_and_eval() -> None:
    case = next(
        c for c in CASES if len(list(iter_steps(*c))) > 1 and _module(c[0]).program.signature["state"]
    )
    steps = list(iter_steps(*case))
    crit = _module(case[0], **steps[0]["params"])
    for k, v in steps[0]["state"].items():
        setattr(crit, k, torch.as_tensor(np.asarray(v)))
    crit(**{k: torch.from_numpy(v.copy()) for k, v in steps[0]["inputs"].items()})
    names = crit._states
    assert all(n in crit.state_dict() for n in names)
    before = {n: getattr(crit, n).clone() for n in names}
    crit.eval()
    crit(**{k: torch.from_numpy(v.copy()) for k, v in steps[1]["inputs"].items()})
    for n in names:
        torch.testing.assert_close(getattr(crit, n), before[n], rtol=0, atol=0)


def test_errors() -> None:
    crit = lt.LossModule(ll.stdlib("focal"))
    x = torch.randn(8, 4)
    with pytest.raises(ll.DataError, match="target"):
        crit(x, torch.zeros(8))
    with pytest.raises(ll.DataError, match="axis 0"):
        crit(x, torch.zeros(9, dtype=torch.long))
    with pytest.raises(ll.DataError, match="unknown param"):
        lt.LossModule(ll.stdlib("focal"), nope=1.0)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="different devices"):
            crit(x.cuda(), torch.zeros(8, dtype=torch.long))


def test_exported_path_agrees_with_the_jit() -> None:
    # What tensors on another device run, exercised here on CPU tensors.
    crit = lt.LossModule(ll.stdlib("focal"), gamma=2.0)
    x = torch.randn(32, 10, requires_grad=True)
    t = torch.randint(0, 10, (32,))
    a = crit._forward_exported({"logits": x, "target": t})
    a.backward()
    g = x.grad.clone()
    x.grad = None
    b = crit(x, t)
    b.backward()
    assert abs(a.item() - b.item()) < 1e-5
    torch.testing.assert_close(g, x.grad, rtol=1e-4, atol=1e-6)
