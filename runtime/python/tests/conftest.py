"""Shared fixtures: the repository layout, the `lossc` binary and exported modules."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
CASES = ROOT / "tests" / "conformance" / "cases" / "public"
STDLIB = ROOT / "stdlib"
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
# LOSSC picks another build of the compiler (a CUDA build, say).
LOSSC = Path(os.environ.get("LOSSC", TARGET_DIR / "release" / "lossc"))


def stdlib_names() -> List[str]:
    """The 35 stdlib losses with conformance cases."""
    listed = (ROOT / "tests" / "conformance" / "LOSSES.txt").read_text().split()
    return sorted(n for n in listed if not n.startswith("#"))


def lossc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not LOSSC.exists():
        pytest.fail(f"{LOSSC} is missing: run `cargo build --release` first")
    return subprocess.run([str(LOSSC), *args], capture_output=True, text=True, check=check, timeout=120)


_MODULES: Dict[Tuple[str, str], ModuleType] = {}


def export_module(path: Path, target: str, out_dir: Path, name: str = "") -> ModuleType:
    """Exports `path` for `target` into `out_dir` and imports the module."""
    key = (str(path), target)
    if key in _MODULES:
        return _MODULES[key]
    mod_name = f"exported_{target}_{name or path.stem}"
    out = out_dir / f"{mod_name}.py"
    lossc("export", str(path), "--target", target, "-o", str(out))
    spec = importlib.util.spec_from_file_location(mod_name, out)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _MODULES[key] = mod
    return mod


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("exported")


def case_dirs(loss: str) -> List[Path]:
    return sorted(p for p in (CASES / loss).iterdir() if p.is_dir())


def all_cases() -> List[Tuple[str, str]]:
    return [(loss, c.name) for loss in stdlib_names() for c in case_dirs(loss)]


def steps_of(case: Path) -> List[Path]:
    steps = sorted(p for p in case.iterdir() if p.name.startswith("step-"))
    return steps or [case]


def read_step(step: Path) -> Dict[str, Any]:
    inputs = {p.stem: np.load(p) for p in sorted((step / "inputs").glob("*.npy"))}
    params = json.loads((step / "params.json").read_text())
    state_path = step / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    expected = json.loads((step / "expected.json").read_text())
    grads = {k: np.load(step / v) for k, v in expected.get("grads", {}).items()}
    return {"inputs": inputs, "params": params, "state": state, "expected": expected, "grads": grads}


def close(got: Any, exp: Any, rtol: float, atol: float) -> Tuple[bool, str]:
    """The conformance tolerances: |got - exp| <= atol * max(1, max|exp|) + rtol * |exp|."""
    a = np.asarray(got, dtype=np.float64)
    b = np.asarray(exp, dtype=np.float64)
    if a.shape != b.shape:
        return False, f"shape {a.shape} != {b.shape}"
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return False, "non-finite mismatch"
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    fin = np.isfinite(b)
    err = np.abs(a[fin] - b[fin])
    ok = bool(np.all(err <= atol * scale + rtol * np.abs(b[fin])))
    return ok, f"max abs err {float(err.max()) if err.size else 0.0:.3g} (scale {scale:.3g})"


def check_step(loss: Any, grads: Dict[str, Any], state: Dict[str, Any], data: Dict[str, Any]) -> None:
    exp = data["expected"]
    ok, msg = close(loss, exp["loss"], 0.0, 2e-4)
    assert ok, f"loss {float(np.asarray(loss))} vs {exp['loss']}: {msg}"
    for name, g in data["grads"].items():
        assert name in grads, f"no gradient for {name}"
        ok, msg = close(grads[name], g, 1e-3, 1e-5)
        assert ok, f"gradient of {name}: {msg}"
    for name, v in exp.get("state", {}).items():
        assert name in state, f"no new state {name}"
        ok, msg = close(state[name], v, 0.0, 2e-4)
        assert ok, f"state {name}: {msg}"


def iter_steps(loss: str, case: str) -> Iterator[Dict[str, Any]]:
    for step in steps_of(CASES / loss / case):
        yield read_step(step)
