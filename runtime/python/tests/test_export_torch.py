"""The torch export beyond conformance: torch.compile on every stdlib loss, the
`Loss` module (state in buffers, training/eval, state_dict, params as attributes),
data checks with the CLI's messages, f64 inputs and devices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import STDLIB, case_dirs, export_module, read_step, stdlib_names, steps_of

torch = pytest.importorskip("torch")


def _first_case(loss: str):
    return read_step(steps_of(case_dirs(loss)[0])[0])


def _torch_inputs(mod, data, grad=True):
    diff = {d["name"] for d in mod.SIGNATURE["inputs"] if d["diff"]}
    out = {}
    for k, v in data["inputs"].items():
        t = torch.from_numpy(v.copy())
        out[k] = t.requires_grad_(True) if (grad and k in diff) else t
    return out, diff


@pytest.mark.parametrize("loss", stdlib_names())
def test_torch_compile(loss: str, export_dir: Path) -> None:
    """torch.compile(loss_fn) (inductor on CPU) runs and agrees with eager mode."""
    mod = export_module(STDLIB / f"{loss}.loss", "torch", export_dir)
    data = _first_case(loss)
    torch._dynamo.reset()
    compiled = torch.compile(mod.loss_fn)
    a, diff = _torch_inputs(mod, data)
    b, _ = _torch_inputs(mod, data)
    state = {k: torch.as_tensor(np.asarray(v)) for k, v in data["state"].items()}
    la, sa, _ = mod.loss_fn(a, data["params"], state)
    lb, sb, _ = compiled(b, data["params"], state)
    la.backward()
    lb.backward()
    assert torch.allclose(la.detach(), lb.detach(), rtol=1e-5, atol=1e-6), (float(la), float(lb))
    for k in diff:
        if a[k].grad is None:
            continue
        assert torch.allclose(a[k].grad, b[k].grad, rtol=1e-4, atol=1e-6), k
    for k in sa:
        assert torch.allclose(sa[k].double(), sb[k].double(), rtol=1e-5, atol=1e-6), k


def test_module_state_training_and_eval(export_dir: Path) -> None:
    mod = export_module(STDLIB / "cw_bass.loss", "torch", export_dir)
    data = _first_case("cw_bass")
    crit = mod.Loss(**data["params"])
    assert set(dict(crit.named_buffers())) == {"conf_ema", "step"}
    inputs, _ = _torch_inputs(mod, data)
    crit.train()
    loss = crit(**inputs)
    loss.backward()
    assert int(crit.step) == 1
    first_ema = float(crit.conf_ema)
    assert first_ema == pytest.approx(data["expected"]["state"]["conf_ema"], rel=1e-5)
    assert set(crit.last_reports) == {"threshold", "kept"}
    crit.eval()
    crit(**_torch_inputs(mod, data, grad=False)[0])
    assert int(crit.step) == 1 and float(crit.conf_ema) == first_ema
    sd = crit.state_dict()
    fresh = mod.Loss(**data["params"])
    fresh.load_state_dict(sd)
    assert int(fresh.step) == 1
    # positional inputs in declaration order give the same loss as names
    names = [d["name"] for d in mod.SIGNATURE["inputs"]]
    crit.eval()
    by_pos = crit(*[inputs[n].detach() for n in names])
    by_name = crit(**{n: inputs[n].detach() for n in names})
    assert float(by_pos) == float(by_name)


def test_module_params_are_attributes(export_dir: Path) -> None:
    mod = export_module(STDLIB / "focal.loss", "torch", export_dir)
    data = _first_case("focal")
    crit = mod.Loss()
    inputs, _ = _torch_inputs(mod, data, grad=False)
    base = float(crit(**inputs))
    crit.gamma = 0.0
    changed = float(crit(**inputs))
    assert base != changed
    with pytest.raises(ValueError, match="unknown param `gama`"):
        mod.Loss(gama=1.0)


def test_data_errors_name_the_input(export_dir: Path) -> None:
    mod = export_module(STDLIB / "cross_entropy.loss", "torch", export_dir)
    logits = torch.zeros(4, 3)
    w = torch.ones(3)
    with pytest.raises(mod.DataError, match=r"index 7 out of range for C=3 at target\[2\]") as e:
        mod.loss_fn({"logits": logits, "target": torch.tensor([0, 1, 7, 2]), "weight": w})
    assert e.value.code == "L6201"
    assert isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match=r"input `target` axis 0 has size 3, but N = 4"):
        mod.loss_fn({"logits": logits, "target": torch.tensor([0, 1, 2]), "weight": w})
    with pytest.raises(ValueError, match=r"missing input `target`"):
        mod.loss_fn({"logits": logits, "weight": w})
    with pytest.raises(ValueError, match=r"input `target` is float32, but the loss declares i64\[N\]"):
        mod.loss_fn({"logits": logits, "target": torch.zeros(4), "weight": w})
    # checks=False skips the data checks (and their synchronisation on CUDA)
    ok = mod.loss_fn({"logits": logits, "target": torch.tensor([0, 1, 2, 2]), "weight": w}, checks=False)[0]
    assert torch.isfinite(ok)


def test_f64_inputs_compute_in_f64(export_dir: Path) -> None:
    mod = export_module(STDLIB / "focal.loss", "torch", export_dir)
    data = _first_case("focal")
    inputs = {
        k: torch.from_numpy(v.astype(np.float64) if v.dtype == np.float32 else v)
        for k, v in data["inputs"].items()
    }
    for d in mod.SIGNATURE["inputs"]:
        if d["diff"]:
            inputs[d["name"]].requires_grad_(True)
    loss, _, _ = mod.loss_fn(inputs, data["params"])
    assert loss.dtype == torch.float64
    loss.backward()
    assert abs(float(loss.detach()) - data["expected"]["loss"]) <= 1e-9 * max(
        1.0, abs(data["expected"]["loss"])
    )
    for d in mod.SIGNATURE["inputs"]:
        if d["diff"]:
            assert inputs[d["name"]].grad.dtype == torch.float64
