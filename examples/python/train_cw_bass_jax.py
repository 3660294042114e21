"""Train a small classifier with the CW-BASS loss exported to JAX.

    cargo build --release
    python3 examples/python/train_cw_bass_jax.py

The same task as train_cw_bass_torch.py: four Gaussian classes in 8 dimensions,
4,000 training points, 2% labelled and 30% of those labels wrong. A two-layer
network is trained with a hand-written SGD-with-momentum step under `jax.jit`:
once with cross-entropy on the labelled points, once with `stdlib/cw_bass.loss`
exported by `lossc export --target jax`. The loss's state (the confidence EMA
and the step) is an explicit value passed in and returned by every step, as JAX
code carries state.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[2]


def export(loss: str, out_dir: Path):
    lossc = ROOT / "target" / "release" / "lossc"
    out = out_dir / f"{loss}_jax.py"
    subprocess.run(
        [str(lossc), "export", str(ROOT / "stdlib" / f"{loss}.loss"), "--target", "jax", "-o", str(out)],
        check=True,
    )
    spec = importlib.util.spec_from_file_location(f"{loss}_jax", out)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CENTERS = jax.random.normal(jax.random.PRNGKey(3), (4, 8)) * 1.2


def make_data(n: int, key):
    ky, kx = jax.random.split(key)
    y = jax.random.randint(ky, (n,), 0, 4)
    return CENTERS[y] + jax.random.normal(kx, (n, 8)), y


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (8, 32)) * (1 / 8) ** 0.5,
        "b1": jnp.zeros(32),
        "w2": jax.random.normal(k2, (32, 4)) * (1 / 32) ** 0.5,
        "b2": jnp.zeros(4),
    }


def forward(p, x):
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def sgd(p, v, g, lr=0.1, momentum=0.9):
    v = jax.tree_util.tree_map(lambda v, g: momentum * v + g, v, g)
    return jax.tree_util.tree_map(lambda p, v: p - lr * v, p, v), v


def accuracy(p, x, y) -> float:
    return float(jnp.mean(jnp.argmax(forward(p, x), 1) == y))


def main() -> None:
    key = jax.random.PRNGKey(0)
    kd, kl, kf, kc, kp, ko = jax.random.split(key, 6)
    x, y_true = make_data(4000, kd)
    x_test, y_test = make_data(2000, jax.random.PRNGKey(1))
    labeled = jax.random.uniform(kl, (4000,)) < 0.02
    flip = labeled & (jax.random.uniform(kf, (4000,)) < 0.3)
    y = jnp.where(flip, (y_true + jax.random.randint(kc, (4000,), 1, 4)) % 4, y_true)
    target = jnp.where(labeled, y, 255)  # unlabelled targets are never read
    boundary = jnp.zeros(4000, dtype=bool)
    print(f"{len(x)} training points, {int(labeled.sum())} labelled, {int(flip.sum())} of them mislabelled")

    steps, batch = 300, 512
    params = {"ema_momentum": 0.9, "base_threshold": 0.9, "min_threshold": 0.5, "max_threshold": 0.95}
    with tempfile.TemporaryDirectory() as tmp:
        mod = export("cw_bass", Path(tmp))

        @jax.jit
        def ce_step(p, v):
            def f(p):
                lp = jax.nn.log_softmax(forward(p, x))
                nll = -jnp.take_along_axis(lp, y[:, None], 1)[:, 0]
                return jnp.sum(jnp.where(labeled, nll, 0.0)) / jnp.sum(labeled)

            return sgd(p, v, jax.grad(f)(p))

        @jax.jit
        def cw_step(p, v, state, idx):
            def f(p):
                loss, new_state, reports = mod.loss_fn(
                    {
                        "logits": forward(p, x[idx]),
                        "target": target[idx],
                        "labeled": labeled[idx],
                        "boundary": boundary[idx],
                    },
                    params,
                    state,
                )
                return loss, (new_state, reports)

            (loss, (new_state, reports)), g = jax.value_and_grad(f, has_aux=True)(p)
            p, v = sgd(p, v, g)
            return p, v, new_state, loss, reports

        p0 = init_params(kp)
        p, v = p0, jax.tree_util.tree_map(jnp.zeros_like, p0)
        for _ in range(steps):
            p, v = ce_step(p, v)
        acc_ce = accuracy(p, x_test, y_test)

        p, v = p0, jax.tree_util.tree_map(jnp.zeros_like, p0)
        state = mod.init_state(params=params)
        print(f"{'step':>5} {'loss':>8} {'threshold':>9} {'kept':>5} {'conf_ema':>8}")
        for step in range(steps):
            ko, k = jax.random.split(ko)
            idx = jax.random.permutation(k, 4000)[:batch]
            p, v, state, loss, reports = cw_step(p, v, state, idx)
            if step % 50 == 0 or step == steps - 1:
                print(
                    f"{step:5d} {float(loss):8.4f} {float(reports['threshold']):9.4f} "
                    f"{int(reports['kept']):5d} {float(state['conf_ema']):8.4f}"
                )
        print(f"state after training: step={int(state['step'])}, conf_ema={float(state['conf_ema']):.4f}")
        print(f"test accuracy, cross-entropy on labelled points: {acc_ce:.3f}")
        print(f"test accuracy, CW-BASS (exported to jax):       {accuracy(p, x_test, y_test):.3f}")


if __name__ == "__main__":
    sys.exit(main())
