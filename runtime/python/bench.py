"""Per-call cost of `losslang.Loss` on NumPy arrays against the Rust `JitLoss` on the
same arrays (timed inside the extension, with no Python between calls).

    python3 runtime/python/bench.py [--loss focal] [--iters 2000]

Prints, for N = 32, C = 10 and N = 65536, C = 100: the median time of
`JitLoss::call` alone, of `Loss.__call__`, their difference (the package's
overhead per call) and their ratio. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import List, Tuple

# Run as a script, this folder is first on sys.path and its losslang/ (the sources,
# without the compiled extension) would shadow the installed package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import losslang as ll  # noqa: E402
import numpy as np  # noqa: E402


def median_us(times: List[float]) -> float:
    return statistics.median(times) * 1e6


def measure(loss: str, n: int, c: int, iters: int) -> Tuple[float, float]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c), dtype=np.float32)
    t = rng.integers(0, c, n)
    f = ll.Loss(ll.stdlib(loss))
    r = f(x, t)  # compiles nothing more; sizes the gradient array
    grads = [r.grads[k] for k in f._grad_names]
    inputs = [("logits", x), ("target", t)]
    params = list(f.params.items())
    rust = f._runner.time_jit(inputs, params, [], grads, [], iters)
    py = []
    for _ in range(iters):
        t0 = time.perf_counter()
        f(x, t)
        py.append(time.perf_counter() - t0)
    # Interleave a second round of each so that drift on a busy machine hits both.
    rust += f._runner.time_jit(inputs, params, [], grads, [], iters)
    for _ in range(iters):
        t0 = time.perf_counter()
        f(x, t)
        py.append(time.perf_counter() - t0)
    return median_us(rust), median_us(py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loss", default="focal", help="a stdlib loss with inputs (logits, target)")
    ap.add_argument("--iters", type=int, default=2000, help="calls per round at N=32 (fewer at N=65536)")
    a = ap.parse_args()
    print(f"loss {a.loss}, median of two interleaved rounds")
    print(f"{'N':>6} {'C':>4} {'JitLoss (Rust)':>15} {'ll.Loss':>10} {'overhead':>10} {'ratio':>6}")
    for n, c, iters in ((32, 10, a.iters), (65536, 100, max(20, a.iters // 100))):
        rust, py = measure(a.loss, n, c, iters)
        print(f"{n:>6} {c:>4} {rust:>12.1f} us {py:>7.1f} us {py - rust:>7.1f} us {py / rust:>6.3f}")


if __name__ == "__main__":
    main()
