"""Runs every case written by export_random.rs: the exported NumPy module on f64 data
against the interpreter's results. Prints one line per disagreement and a summary;
exits 1 on any disagreement."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np


def close(got: np.ndarray, want: np.ndarray) -> bool:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return False
    fin = np.isfinite(want)
    if not np.array_equal(np.isfinite(got), fin):
        return False
    if not np.array_equal(got[~fin], want[~fin]) and not np.all(np.isnan(got[~fin]) & np.isnan(want[~fin])):
        return False
    scale = max(1.0, float(np.max(np.abs(want[fin]))) if fin.any() else 1.0)
    # the interpreter rounds f32 results to f32; the module keeps f64
    return bool(np.all(np.abs(got[fin] - want[fin]) <= 1e-6 * scale + 1e-5 * np.abs(want[fin])))


def main() -> int:
    root = Path(sys.argv[1])
    passed, failed = 0, 0
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        meta = json.loads((case / "case.json").read_text())
        spec = importlib.util.spec_from_file_location(f"m{case.name}", case / "module.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        inputs = {p.stem: np.load(p) for p in (case / "inputs").glob("*.npy")}
        why = ""
        try:
            loss, grads, state, reports = mod.loss_and_grad(inputs, meta["params"], dims=meta["dims"])
            if not close(loss, float(meta["loss"])):
                why = f"loss {float(loss)!r} vs {meta['loss']!r}"
            for kind, names, got in (
                ("grad", meta["grads"], grads),
                ("state", meta["state"], state),
                ("report", meta["reports"], reports),
            ):
                for n in names:
                    want = np.load(case / "expected" / f"{kind}_{n}.npy")
                    if not why and not close(got[n], want):
                        why = f"{kind} {n}: max err {float(np.max(np.abs(np.asarray(got[n], np.float64) - want))):.3g}"
        except Exception as e:  # a crash is a finding too
            why = f"{type(e).__name__}: {e}"
        if why:
            failed += 1
            print(f"FAIL {case.name}: {why}\n{(case / 'program.loss').read_text()}")
        else:
            passed += 1
    print(f"export random: {passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
