#!/usr/bin/env python3
"""Computes the PyTorch expectations of the parity suite once.

Writes runtime/tests/torch_parity/cases.json, read by runtime/tests/torch_parity.rs.
CI does not need torch: re-run this script (with `pip install torch numpy`) only when
the cases change, and commit the JSON.

Every expectation is torch evaluated in float64 on the float32 inputs (the value every
backend is compared with), with torch's own float32 value kept beside it for reference.
Large cases are not stored: their inputs come from `splitmix64(seed, i)`, which the Rust
test reproduces bit for bit, and only the loss and a few gradient entries are stored.

    python3 scripts/torch_parity_cases.py
"""

import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "runtime", "tests", "torch_parity", "cases.json")

MASK64 = (1 << 64) - 1


def splitmix64(seed, n):
    """splitmix64 of counters seed*2^32 + i, i < n (the Rust test's `splitmix64`)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) * np.uint64(1 << 32) + np.arange(n, dtype=np.uint64)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def generated_ce(seed, n, c, scale):
    """Logits uniform in [-scale, scale) as f32, targets uniform in [0, C)."""
    u = (splitmix64(seed, n * c) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    logits = ((u * 2.0 - 1.0) * scale).astype(np.float32).reshape(n, c)
    target = (splitmix64(seed + 1, n) % np.uint64(c)).astype(np.int64)
    return logits, target


def num(x):
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def arr(a, dtype):
    a = np.asarray(a)
    return {"dtype": dtype, "shape": list(a.shape), "data": [num(v) for v in a.reshape(-1)]}


def torch_ce(logits, target, weight, ignore_index, ls, dtype):
    x = torch.tensor(logits, dtype=dtype, requires_grad=True)
    w = torch.tensor(weight, dtype=dtype)
    t = torch.tensor(target)
    loss = F.cross_entropy(x, t, weight=w, ignore_index=ignore_index, label_smoothing=ls)
    loss.backward()
    return loss.item(), x.grad.numpy()


def ce_case(name, logits, target, weight, ignore_index=-100, ls=0.0, deviation=None, note=""):
    logits = np.asarray(logits, dtype=np.float32)
    weight = np.asarray(weight, dtype=np.float32)
    target = np.asarray(target, dtype=np.int64)
    # label_smoothing is an f32 param: torch sees the same rounded value.
    ls32 = float(np.float32(ls))
    l64, g64 = torch_ce(logits, target, weight, ignore_index, ls32, torch.float64)
    l32, _ = torch_ce(logits, target, weight, ignore_index, ls32, torch.float32)
    case = {
        "name": name,
        "loss": "cross_entropy",
        "note": note,
        "params": {"ignore_index": ignore_index, "label_smoothing": ls32},
        "inputs": {
            "logits": arr(logits, "f32"),
            "target": arr(target, "i64"),
            "weight": arr(weight, "f32"),
        },
        "torch_f32_loss": num(l32),
        "expected_loss": num(l64),
        "expected_grads": {"logits": arr(g64, "f64")},
    }
    if deviation is not None:
        # A documented difference (docs/pytorch_cross_entropy.md): torch's value is kept.
        case["torch_loss"] = case["expected_loss"]
        case["expected_loss"] = deviation["loss"]
        case["expected_grads"] = {"logits": arr(np.zeros_like(g64), "f64")}
        case["deviation"] = deviation["why"]
    return case


def torchvision_focal(x, t, gamma, alpha, reduction):
    """torchvision.ops.sigmoid_focal_loss, written out (torchvision/ops/focal_loss.py)."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * t + (1 - alpha) * (1 - t)
        loss = alpha_t * loss
    if reduction == 0:
        return loss.mean()
    # RetinaNet: the sum over the number of foreground rows (at least 1).
    return loss.sum() / max(1.0, float((t.sum(1) > 0).sum()))


def focal_case(name, logits, target, gamma=2.0, alpha=0.25, reduction=0):
    logits = np.asarray(logits, dtype=np.float32)
    target = np.asarray(target, dtype=np.int64)
    n, c = logits.shape
    onehot = np.zeros((n, c))
    for i, y in enumerate(target):
        if y >= 0:
            onehot[i, y] = 1.0
    g32, a32 = float(np.float32(gamma)), float(np.float32(alpha))
    out = {}
    for dtype in (torch.float64, torch.float32):
        x = torch.tensor(logits, dtype=dtype, requires_grad=True)
        t = torch.tensor(onehot, dtype=dtype)
        loss = torchvision_focal(x, t, g32, a32, reduction)
        loss.backward()
        out[dtype] = (loss.item(), x.grad.numpy())
    return {
        "name": name,
        "loss": "focal",
        "note": "torchvision.ops.sigmoid_focal_loss formula",
        "params": {"gamma": g32, "alpha": a32, "reduction": reduction},
        "inputs": {"logits": arr(logits, "f32"), "target": arr(target, "i64")},
        "torch_f32_loss": num(out[torch.float32][0]),
        "expected_loss": num(out[torch.float64][0]),
        "expected_grads": {"logits": arr(out[torch.float64][1], "f64")},
    }


def generated_case(name, seed, n, c, scale, ls, heavy, probes):
    logits, target = generated_ce(seed, n, c, scale)
    weight = np.ones(c, dtype=np.float32)
    ls32 = float(np.float32(ls))
    l64, g64 = torch_ce(logits, target, weight, -100, ls32, torch.float64)
    l32, _ = torch_ce(logits, target, weight, -100, ls32, torch.float32)
    flat = g64.reshape(-1)
    return {
        "name": name,
        "loss": "cross_entropy",
        "note": f"generated: splitmix64(seed={seed}), logits in [-{scale}, {scale})",
        "params": {"ignore_index": -100, "label_smoothing": ls32},
        "generated": {"seed": seed, "n": n, "c": c, "scale": scale},
        "heavy": heavy,
        "torch_f32_loss": num(l32),
        "expected_loss": num(l64),
        "grad_probes": [[int(i), num(flat[i])] for i in probes],
        "grad_max_abs": num(np.abs(flat).max()),
    }


def main():
    rng = np.random.default_rng(20261206)
    cases = []
    n, c = 8, 5
    base = rng.normal(size=(n, c)).astype(np.float32) * 2
    tgt = rng.integers(0, c, size=n)
    weights = {
        "unweighted": np.ones(c, dtype=np.float32),
        "weighted": rng.uniform(0.3, 2.0, size=c).astype(np.float32),
    }
    for wname, w in weights.items():
        for ii in (-100, 2):
            t = tgt.copy()
            if ii == -100:
                t[[1, 5]] = -100
            else:
                t[[0, 3]] = 2
            for ls in (0.0, 0.1, 0.3):
                cases.append(
                    ce_case(f"grid-{wname}-ignore{ii}-ls{ls}", base, t, w, ii, ls, note="grid")
                )

    # A padded vocabulary: -inf columns that no target uses.
    x = rng.normal(size=(6, 7)).astype(np.float32)
    x[:, 5:] = -np.inf
    t = rng.integers(0, 5, size=6)
    for wname, w in (("unweighted", np.ones(7)), ("weighted", rng.uniform(0.5, 1.5, size=7))):
        cases.append(ce_case(f"neginf-columns-{wname}", x, t, w, note="-inf logit columns, label_smoothing 0"))

    # Masks with torch.finfo(torch.float32).min, never at the target.
    x = rng.normal(size=(6, 9)).astype(np.float32)
    t = rng.integers(0, 9, size=6)
    fmin = np.finfo(np.float32).min
    for i in range(6):
        for j in range(9):
            if j != t[i] and (i + j) % 3 == 0:
                x[i, j] = fmin
    x[:, 8] = fmin
    t[t == 8] = 0
    cases.append(ce_case("finfo-min-mask", x, t, np.ones(9), note="finfo(float32).min masks, label_smoothing 0"))
    cases.append(
        ce_case(
            "finfo-min-mask-weighted-ignored",
            x,
            np.where(np.arange(6) == 2, -100, t),
            rng.uniform(0.5, 1.5, size=9),
            note="finfo(float32).min masks, an ignored row",
        )
    )

    # Saturated logits of +-1e4.
    x = np.where(rng.uniform(size=(7, 4)) < 0.5, -1e4, 1e4).astype(np.float32)
    x[0] = [1e4, 1e4, -1e4, 3.0]
    t = rng.integers(0, 4, size=7)
    for ls in (0.0, 0.1):
        cases.append(ce_case(f"pm1e4-ls{ls}", x, t, np.ones(4), ls=ls, note="logits of +-1e4"))

    # The same logits shifted by a constant: torch's value on the shifted f32 inputs.
    x = rng.normal(size=(6, 5)).astype(np.float32)
    t = rng.integers(0, 5, size=6)
    for shift in (1e4, 1e5, 1e6, 1e7):
        xs = (x.astype(np.float64) + shift).astype(np.float32)
        for ls in (0.0, 0.1):
            cases.append(
                ce_case(f"shift-{shift:.0e}-ls{ls}", xs, t, np.ones(5), ls=ls, note=f"logits + {shift:g}")
            )

    # One sample.
    cases.append(ce_case("n1", rng.normal(size=(1, 6)), [4], rng.uniform(0.5, 1.5, size=6), ls=0.1, note="N = 1"))

    # Every target ignored: torch gives NaN; losslang 0 (the documented deviation).
    cases.append(
        ce_case(
            "all-ignored",
            rng.normal(size=(4, 3)),
            [-100] * 4,
            np.ones(3),
            ls=0.1,
            deviation={"loss": 0.0, "why": "all targets ignored -> 0 (torch: NaN)"},
            note="every target ignored",
        )
    )

    # A large vocabulary, generated from a seed (not stored).
    cases.append(generated_case("c32000-n64", 7, 64, 32000, 8.0, 0.1, False, [0, 1, 31999, 32000 * 63 + 5]))
    cases.append(
        generated_case("c32000-n4096", 11, 4096, 32000, 8.0, 0.1, True, [0, 12345, 32000 * 4095 + 31999])
    )

    # Focal against torchvision's formula.
    x = (rng.normal(size=(8, 4)) * 3).astype(np.float32)
    t = rng.integers(-1, 4, size=8)
    cases.append(focal_case("focal-default", x, t))
    cases.append(focal_case("focal-gamma0", x, t, gamma=0.0))
    cases.append(focal_case("focal-noalpha", x, t, alpha=-1.0))
    cases.append(focal_case("focal-gamma0.5-alpha0.75", x, t, gamma=0.5, alpha=0.75))
    cases.append(focal_case("focal-retinanet", x, t, reduction=1))
    xs = np.where(rng.uniform(size=(6, 3)) < 0.5, -30.0, 30.0).astype(np.float32)
    cases.append(focal_case("focal-saturated", xs, rng.integers(-1, 3, size=6)))

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases}, f, indent=1)
        f.write("\n")
    print(f"{len(cases)} cases -> {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
