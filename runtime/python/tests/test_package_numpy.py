"""The installed package `losslang` on NumPy arrays: every conformance case through
`Loss` on the JIT and the interpreter (state carried), params, out=, zero copy,
threads, and data that does not fit."""

from __future__ import annotations

import tracemalloc
import warnings
from typing import Any, Dict

import losslang as ll
import numpy as np
import pytest
from conftest import STDLIB, all_cases, check_step, iter_steps

CASES = all_cases()
_PROGRAMS: Dict[str, Any] = {}


def _program(loss: str) -> Any:
    if loss not in _PROGRAMS:
        # Some stdlib losses carry checker warnings (test_package_errors covers them).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ll.LossWarning)
            _PROGRAMS[loss] = ll.load(STDLIB / f"{loss}.loss")
    return _PROGRAMS[loss]


@pytest.mark.parametrize("backend", ["jit", "interp"])
@pytest.mark.parametrize("loss,case", CASES, ids=[f"{a}/{b}" for a, b in CASES])
def test_conformance(loss: str, case: str, backend: str) -> None:
    f = None
    for data in iter_steps(loss, case):
        if f is None:
            # Params are fixed within a case; state is carried by the Loss.
            f = ll.Loss(_program(loss), backend=backend, **data["params"])
            if data["state"]:
                f.state = data["state"]
        r = f(**data["inputs"])
        check_step(r.loss, r.grads, r.state, data)
        assert f.state.keys() == r.state.keys()


def _ce_inputs(n: int, c: int, seed: int = 0) -> Any:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, c), dtype=np.float32), rng.integers(0, c, n)


def test_load_compile_stdlib_agree() -> None:
    x, t = _ce_inputs(64, 10)
    a = ll.Loss(ll.load(STDLIB / "focal.loss"))(x, t).loss
    b = ll.Loss(ll.compile((STDLIB / "focal.loss").read_text(), name="focal.loss"))(x, t).loss
    c = ll.Loss(ll.stdlib("focal"))(x, t).loss
    d = ll.Loss(str(STDLIB / "focal.loss"))(logits=x, target=t).loss
    assert a == b == c == d
    assert isinstance(a, float)


def test_signature_explain_emit() -> None:
    p = ll.stdlib("focal")
    sig = p.signature
    assert [i["name"] for i in sig["inputs"]] == ["logits", "target"]
    assert sig["inputs"][0] == {"name": "logits", "dtype": "f32", "shape": ["N", "C"], "diff": True}
    assert {q["name"] for q in sig["params"]} >= {"gamma"}
    assert sig["state"] == [] and sig["reports"] == []
    assert "logits" in p.explain()
    assert p.emit("opt").strip()
    with pytest.raises(ValueError, match="unknown stage"):
        p.emit("nope")


def test_params_change_without_recompiling() -> None:
    x, t = _ce_inputs(32, 10)
    f = ll.Loss(ll.stdlib("focal"), gamma=2.0)
    a = f(x, t).loss
    f.params["gamma"] = 0.0
    b = f(x, t).loss
    assert a != b
    assert b == ll.Loss(ll.stdlib("focal"), gamma=0.0)(x, t).loss


def test_grads_reused_and_out() -> None:
    x, t = _ce_inputs(32, 10)
    f = ll.Loss(ll.stdlib("focal"))
    g1 = f(x, t).grads["logits"]
    first = g1.copy()
    g2 = f(x * 2, t).grads["logits"]
    assert g2 is g1, "the Loss reuses its gradient arrays"
    assert g1.dtype == np.float32 and g1.shape == x.shape
    mine = np.zeros_like(x)
    r = f(x, t, out={"logits": mine})
    assert r.grads["logits"] is mine
    np.testing.assert_array_equal(mine, first)
    assert f(x, t, grad=False).grads == {}
    with pytest.raises(ll.DataError, match="out"):
        f(x, t, out={"logits": np.zeros((3, 3), np.float32)})


def test_state_carried_set_and_reset() -> None:
    case = next(
        (c for c in CASES if len(list(iter_steps(*c))) > 1 and _program(c[0]).signature["state"]), None
    )
    assert case is not None, "a multi-step conformance case"
    steps = list(iter_steps(*case))
    f = ll.Loss(_program(case[0]), **steps[0]["params"])
    if steps[0]["state"]:
        f.state = steps[0]["state"]
    first = f(**steps[0]["inputs"])
    saved = f.state
    second = f(**steps[1]["inputs"])
    f.state = saved
    again = f(**steps[1]["inputs"])
    assert again.loss == second.loss
    f.reset_state()
    if steps[0]["state"]:
        f.state = steps[0]["state"]
    assert f(**steps[0]["inputs"]).loss == first.loss


def test_dtype_rules() -> None:
    x, t = _ce_inputs(32, 10)
    f = ll.Loss(ll.stdlib("focal"))
    ref = f(x, t).loss
    # Integer labels of any width are widened, as the command line reads .npy files.
    for dt in (np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32, np.uint64):
        assert f(x, t.astype(dt)).loss == ref
    assert f(x.astype(np.float16).astype(np.float32), t).loss == f(x.astype(np.float16), t).loss
    assert f(x, t.tolist()).loss == ref
    with pytest.raises(ll.DataError, match="target") as e:
        f(x, t.astype(np.float32))
    assert e.value.code == "L6105"
    assert isinstance(e.value, ValueError)
    with pytest.raises(ll.DataError, match="logits"):
        f(x.astype(np.float64), t)
    with pytest.raises(ll.DataError, match="complex"):
        f(x.astype(np.complex64), t)
    with pytest.raises(ll.DataError, match="uint64"):
        f(x, np.full(32, 2**63, dtype=np.uint64))


def test_layouts_are_read_correctly() -> None:
    x, t = _ce_inputs(32, 10)
    f = ll.Loss(ll.stdlib("focal"))
    ref = f(x, t)
    ref_loss, ref_grad = ref.loss, ref.grads["logits"].copy()
    for view in (np.asfortranarray(x), x.T.copy().T, np.repeat(x, 2, axis=1)[:, ::2]):
        r = f(view, t)
        assert r.loss == ref_loss
        np.testing.assert_array_equal(r.grads["logits"], ref_grad)
    buf = np.zeros(x.nbytes + 1, np.uint8)[1:].view(np.float32).reshape(x.shape)
    buf[...] = x
    assert f(buf, t).loss == ref_loss


def test_bad_shapes_and_names() -> None:
    x, t = _ce_inputs(32, 10)
    f = ll.Loss(ll.stdlib("focal"))
    with pytest.raises(ll.DataError, match="rank") as e:
        f(x[0], t)
    assert e.value.code == "L6106"
    with pytest.raises(ll.DataError, match="axis 0"):
        f(x[:5], t)
    with pytest.raises(ll.DataError, match="missing input `target`"):
        f(x)
    with pytest.raises(ll.DataError, match="unknown input `nope`"):
        f(x, t, nope=x)
    with pytest.raises(TypeError, match="inputs"):
        f(x, t, t)
    with pytest.raises(ll.DataError, match="out of range|index|target"):
        f(x, np.full(32, 99))
    f.params["nope"] = 1.0
    with pytest.raises(ll.DataError, match="nope"):
        f(x, t)
    with pytest.raises(ValueError, match="unknown backend"):
        ll.Loss(ll.stdlib("focal"), backend="tpu")
    with pytest.raises(ll.DataError, match="unknown state"):
        f.state = {"nope": 1.0}


def test_empty_batch_is_an_error_or_a_result() -> None:
    f = ll.Loss(ll.stdlib("focal"))
    try:
        r = f(np.zeros((0, 10), np.float32), np.zeros(0, np.int64))
        assert isinstance(r.loss, float)
    except ll.DataError:
        pass


def test_threads_bit_identical() -> None:
    x, t = _ce_inputs(3000, 37, seed=3)
    results = []
    for threads in (1, 2, 3, 4):
        r = ll.Loss(ll.stdlib("focal"), threads=threads)(x, t)
        results.append((r.loss, r.grads["logits"].copy()))
    for loss, grad in results[1:]:
        assert loss == results[0][0]
        np.testing.assert_array_equal(grad, results[0][1])


def test_zero_copy_on_later_calls() -> None:
    n, c = 500_000, 100  # 200 MB of logits
    x = np.zeros((n, c), np.float32)
    t = np.zeros(n, np.int64)
    f = ll.Loss(ll.stdlib("focal"))
    f(x, t)  # allocates the gradient array the Loss then reuses
    tracemalloc.start()
    try:
        f(x, t)
        f(x, t)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, f"a later call allocated {peak / 2**20:.1f} MiB"


def test_candle_backend_agrees() -> None:
    x, t = _ce_inputs(64, 10)
    a = ll.Loss(ll.stdlib("focal"), backend="candle")(x, t)
    b = ll.Loss(ll.stdlib("focal"), backend="jit")(x, t)
    assert abs(a.loss - b.loss) < 1e-5
    np.testing.assert_allclose(a.grads["logits"], b.grads["logits"], atol=1e-6)
