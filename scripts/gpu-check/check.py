#!/usr/bin/env python3
"""The device half of the GPU check (scripts/gpu-check.sh device): needs Python 3 and
numpy, and torch for the PyTorch columns; no Rust.

    check.py BUNDLE [--device cuda] [--lossc PATH] [--parts parity,conformance,train,export,bench]
                    [--jobs J] [--sizes device|small]

BUNDLE is the directory `scripts/gpu-check.sh build` lays out: bin/lossc.xz (CUDA build),
bin/train_noisy_labels.xz, bin/candle-parity.xz (the op parity test; all three unpacked
into --work before use), lib/libcurand.so.10.xz (used when the device has no cuRAND 10),
stdlib/*.loss, cases/public/..., bench/*.loss, and export/ when
the export command has been built. Every conformance case runs through
`lossc run --backend candle --device DEVICE` and is compared with its expected values
(after the op parity test on the device)
(the tolerances of tests/conformance/README.md); the training example runs on the
device; the ruler's four losses are timed in candle on the device (`lossc bench`) and in
PyTorch eager and torch.compile. One summary table closes the output; the exit status
is 0 only when nothing failed (skipped parts do not count as failures).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# ---------------------------------------------------------------------------
# CUDA libraries: the CUDA lossc is linked against libcudart, libcublas(Lt), libcurand,
# libnvrtc (CUDA 13) and the driver's libcuda. The driver provides libcuda; the others
# come from the device's CUDA toolkit or from the nvidia-* wheels that PyTorch installs.


def candidate_lib_dirs(bundle_lib=None):
    dirs = []
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"):
        root = os.environ.get(var)
        if root:
            dirs += [os.path.join(root, "lib64"), os.path.join(root, "lib"),
                     os.path.join(root, "targets", "x86_64-linux", "lib")]
    for root in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-13*"), reverse=True):
        dirs += [os.path.join(root, "lib64"), os.path.join(root, "targets", "x86_64-linux", "lib")]
    # nvidia-* wheels: nvidia/cu13/lib (CUDA 13 wheels) and nvidia/<lib>/lib (CUDA 12 layout).
    try:
        import nvidia  # a namespace package

        for base in list(nvidia.__path__):
            dirs += sorted(glob.glob(os.path.join(base, "*", "lib")))
    except ImportError:
        pass
    try:
        import importlib.util

        spec = importlib.util.find_spec("torch")
        if spec and spec.origin:
            dirs.append(os.path.join(os.path.dirname(spec.origin), "lib"))
    except Exception:
        pass
    # Last: the cuRAND the bundle carries (the device's own comes first).
    if bundle_lib:
        dirs.append(bundle_lib)
    seen, out = set(), []
    for d in dirs:
        if os.path.isdir(d) and d not in seen:
            seen.add(d)
            out.append(d)
    return out


def missing_libs(binary, env):
    p = subprocess.run(["ldd", binary], capture_output=True, text=True, env=env)
    return [l.split()[0] for l in p.stdout.splitlines() if "not found" in l]


BUNDLE_LIB = None  # set by main: where the bundle's carried libraries were unpacked


def resolve_libs(binary, env):
    """Extend LD_LIBRARY_PATH in `env` until `ldd` finds every library; return the
    directories added and the sonames still missing."""
    added = []
    missing = missing_libs(binary, env)
    if not missing:
        return added, []
    for d in candidate_lib_dirs(BUNDLE_LIB):
        if any(os.path.exists(os.path.join(d, so)) for so in missing):
            added.append(d)
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                [d] + [x for x in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if x])
            missing = missing_libs(binary, env)
            if not missing:
                break
    return added, missing


def unpack(src, dst):
    """The build half stores binaries and libraries as NAME.xz (under the carry limit);
    unpack them into dst, outside the bundle (which stays as small as it was carried)."""
    import lzma

    if not os.path.isdir(src):
        return None
    os.makedirs(dst, exist_ok=True)
    for p in sorted(glob.glob(os.path.join(src, "*.xz"))):
        out = os.path.join(dst, os.path.basename(p)[:-3])
        if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(p):
            with lzma.open(p, "rb") as i, open(out + ".tmp", "wb") as o:
                shutil.copyfileobj(i, o)
            os.chmod(out + ".tmp", 0o755)
            os.replace(out + ".tmp", out)
    return dst


def gpu_name():
    if not shutil.which("nvidia-smi"):
        return None
    p = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                        "--format=csv,noheader"], capture_output=True, text=True)
    return p.stdout.strip().splitlines()[0] if p.returncode == 0 and p.stdout.strip() else None


# ---------------------------------------------------------------------------
# conformance (the tolerances of tests/conformance/README.md)


def close(a, b, rtol, atol):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False, f"shape {a.shape} != {b.shape}"
    if not np.all(np.isfinite(a) == np.isfinite(b)):
        return False, "non-finite mismatch"
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    err = np.abs(a - b)
    ok = np.all(err[np.isfinite(b)] <= atol * scale + rtol * np.abs(b[np.isfinite(b)]))
    return bool(ok), f"max abs err {float(np.nanmax(err)) if err.size else 0:.3g} (scale {scale:.3g})"


def check_step(out, gdir, step_dir):
    exp = json.load(open(os.path.join(step_dir, "expected.json")))
    ok, msg = close(out.get("loss", np.nan), exp["loss"], 0.0, 2e-4)
    if not ok:
        return False, "loss " + msg
    for inp, rel in exp.get("grads", {}).items():
        gp = os.path.join(gdir, inp + ".npy")
        if not os.path.exists(gp):
            return False, f"no gradient for {inp}"
        ok, msg = close(np.load(gp), np.load(os.path.join(step_dir, rel)), 1e-3, 1e-5)
        if not ok:
            return False, f"grad {inp} " + msg
    for k, v in exp.get("state", {}).items():
        got = out.get("state", {}).get(k)
        if got is None:
            return False, f"no state {k}"
        ok, msg = close(got, v, 0.0, 2e-4)
        if not ok:
            return False, f"state {k} " + msg
    return True, ""


# A program the device's lowering cannot run says so (docs/candle.md): the counter-based
# generator has no CUDA lowering. Such a case is "unsupported", not a failure.
UNSUPPORTED = re.compile(r"counter-based generator")


def run_case(lossc, bundle, device, env, name, cdir):
    """(status, message): status is pass, fail or unsupported."""
    steps = sorted(d for d in os.listdir(cdir) if d.startswith("step-"))
    step_dirs = [os.path.join(cdir, s) for s in steps] or [cdir]
    state = None
    sp0 = os.path.join(step_dirs[0], "state.json")
    if os.path.exists(sp0):
        state = json.load(open(sp0))
    with tempfile.TemporaryDirectory() as tmp:
        for sd in step_dirs:
            gdir = os.path.join(tmp, "g")
            shutil.rmtree(gdir, ignore_errors=True)
            os.makedirs(gdir)
            cmd = [lossc, "run", os.path.join(bundle, "stdlib", name + ".loss"),
                   "--inputs", os.path.join(sd, "inputs"),
                   "--params", os.path.join(sd, "params.json"),
                   "--grad-out", gdir, "--json", "--no-color",
                   "--backend", "candle", "--device", device]
            if state is not None:
                sp = os.path.join(tmp, "state.json")
                with open(sp, "w") as f:
                    json.dump(state, f)
                cmd += ["--state", sp]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
            except subprocess.TimeoutExpired:
                return "fail", "timeout"
            if p.returncode != 0:
                if UNSUPPORTED.search(p.stderr):
                    return "unsupported", "the counter-based generator has no lowering here"
                return "fail", f"exit {p.returncode}: {p.stderr.strip()[-400:]}"
            lines = [l for l in p.stdout.splitlines() if l.strip().startswith("{")]
            if not lines:
                return "fail", "no JSON on stdout"
            out = json.loads(lines[-1])
            ok, why = check_step(out, gdir, sd)
            if not ok:
                return "fail", why
            state = out.get("state", state)
    return "pass", ""


def conformance(a, env, lossc):
    root = os.path.join(a.bundle, "cases", "public")
    jobs = []
    for name in sorted(os.listdir(root)):
        for case in sorted(os.listdir(os.path.join(root, name))):
            jobs.append((name, case, os.path.join(root, name, case)))
    t0 = time.time()
    results = {}
    with cf.ThreadPoolExecutor(max_workers=a.jobs) as ex:
        futs = {ex.submit(run_case, lossc, a.bundle, a.device, env, n, d): (n, c) for n, c, d in jobs}
        for f in cf.as_completed(futs):
            results[futs[f]] = f.result()
    counts = {"pass": 0, "fail": 0, "unsupported": 0}
    losses_unsupported = set()
    for (n, c), (st, msg) in sorted(results.items()):
        counts[st] += 1
        if st == "fail":
            print(f"FAIL {n}/{c} [candle/{a.device}]: {msg}")
        if st == "unsupported":
            losses_unsupported.add(n)
    dt = time.time() - t0
    summary = f"{counts['pass']} passed, {counts['fail']} failed"
    if counts["unsupported"]:
        summary += f", {counts['unsupported']} unsupported ({', '.join(sorted(losses_unsupported))})"
    print(f"conformance: {summary} in {dt:.0f} s")
    return ("ok" if counts["fail"] == 0 and counts["pass"] > 0 else "FAIL"), summary


# ---------------------------------------------------------------------------
# op parity: compiler/candle/tests/parity.rs built as a program (every op of the catalog
# against the interpreter, both gradient paths), on the device through
# LOSSLANG_CANDLE_DEVICE.


def parity(a, env):
    exe = os.path.join(a.bin, "candle-parity")
    if not os.path.exists(exe):
        return "skipped", "not in the bundle"
    penv = dict(env)
    resolve_libs(exe, penv)
    penv["LOSSLANG_CANDLE_DEVICE"] = a.device
    t0 = time.time()
    p = subprocess.run([exe, "--test-threads", "1"], capture_output=True, text=True,
                       timeout=600, env=penv)
    dt = time.time() - t0
    res = [l for l in p.stdout.splitlines() if l.startswith("test result:")]
    if p.returncode != 0:
        print(p.stdout.strip()[-3000:])
        print(p.stderr.strip()[-1000:])
        return "FAIL", f"exit {p.returncode}: {res[-1] if res else ''} ({dt:.0f} s)"
    return "ok", f"{res[-1][len('test result: '):] if res else 'ok'}"


# ---------------------------------------------------------------------------
# the training example


def train(a, env):
    exe = os.path.join(a.bin, "train_noisy_labels")
    if not os.path.exists(exe):
        return "skipped", "not in the bundle"
    png = os.path.join(tempfile.gettempdir(), f"train_noisy_labels_{a.device.replace(':', '')}.png")
    t0 = time.time()
    p = subprocess.run([exe, png, "--device", a.device], capture_output=True, text=True,
                       timeout=600, env=env)
    dt = time.time() - t0
    print(p.stdout.rstrip())
    if p.returncode != 0:
        print(p.stderr.strip()[-1000:])
        return "FAIL", f"exit {p.returncode} after {dt:.0f} s"
    acc = [l for l in p.stdout.splitlines() if l.startswith("test accuracy")]
    return "ok", f"{acc[-1] if acc else 'done'} ({dt:.1f} s)"


# ---------------------------------------------------------------------------
# exported torch modules on the device: `scripts/gpu-check.sh build` writes
# export/<loss>.py for every stdlib loss with `lossc export --target torch`; this runs
# every conformance case through those modules (EXPORT.md: `loss_fn(inputs, params,
# state) -> (loss, new_state, reports)`, gradients by autograd) with the inputs on the
# device.


def export(a):
    edir = os.path.join(a.bundle, "export")
    mods = sorted(glob.glob(os.path.join(edir, "*.py")))
    if not mods:
        return "skipped", "skipped: export not built"
    try:
        import importlib.util

        import torch
    except ImportError:
        return "skipped", "skipped: no torch"
    dev = a.device
    root = os.path.join(a.bundle, "cases", "public")
    passed = failed = 0
    for mp in mods:
        name = os.path.basename(mp)[:-3]
        if not os.path.isdir(os.path.join(root, name)):
            continue
        spec = importlib.util.spec_from_file_location(f"exported_{name}", mp)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        diff = [i["name"] for i in mod.SIGNATURE["inputs"] if i.get("diff")]
        for case in sorted(os.listdir(os.path.join(root, name))):
            cdir = os.path.join(root, name, case)
            steps = sorted(d for d in os.listdir(cdir) if d.startswith("step-"))
            step_dirs = [os.path.join(cdir, s) for s in steps] or [cdir]
            state = None
            good, why = True, ""
            try:
                for sd in step_dirs:
                    inputs = {}
                    for f in os.listdir(os.path.join(sd, "inputs")):
                        t = torch.from_numpy(np.load(os.path.join(sd, "inputs", f))).to(dev)
                        if f[:-4] in diff:
                            t.requires_grad_(True)
                        inputs[f[:-4]] = t
                    params = json.load(open(os.path.join(sd, "params.json")))
                    if state is None and os.path.exists(os.path.join(sd, "state.json")):
                        st0 = json.load(open(os.path.join(sd, "state.json")))
                        state = {k: torch.as_tensor(np.asarray(v), device=dev) for k, v in st0.items()} or None
                    loss, new_state, _ = mod.loss_fn(inputs, params, state)
                    leaves = [inputs[n] for n in diff if n in inputs]
                    grads = torch.autograd.grad(loss, leaves, allow_unused=True) if leaves else []
                    with tempfile.TemporaryDirectory() as gdir:
                        for n, g in zip([n for n in diff if n in inputs], grads):
                            g = torch.zeros_like(inputs[n]) if g is None else g
                            np.save(os.path.join(gdir, n + ".npy"), g.detach().float().cpu().numpy())
                        out = {"loss": float(loss.detach().cpu()),
                               "state": {k: v.detach().cpu().numpy().tolist() for k, v in new_state.items()}}
                        good, why = check_step(out, gdir, sd)
                    if not good:
                        break
                    state = new_state
            except Exception as e:  # a failing module is a failing case, reported
                good, why = False, f"{type(e).__name__}: {e}"
            if good:
                passed += 1
            else:
                failed += 1
                print(f"FAIL export {name}/{case} [torch/{dev}]: {why}")
    summary = f"{passed} passed, {failed} failed (exported torch modules)"
    return ("ok" if failed == 0 and passed else "FAIL"), summary


# ---------------------------------------------------------------------------
# benchmark: the ruler's four losses (forward + gradients of the diff inputs)

CASES = {
    # name: (file in bundle/bench, dims on the device, dims for --sizes small)
    "cw_ce": ("cw_ce.loss", [dict(N=65536, C=1000), dict(N=8192, C=32000)], [dict(N=4096, C=100)]),
    "focal": ("focal.loss", [dict(N=65536, C=1000), dict(N=8192, C=32000)], [dict(N=4096, C=100)]),
    "infonce": ("infonce.loss", [dict(N=8192, D=512)], [dict(N=512, D=64)]),
    # The portable (CUDA) lowering sorts and scans with [N, N] intermediates
    # (docs/candle.md), so cox stays at a size where that fits.
    "cox": ("cox.loss", [dict(N=16384)], [dict(N=4096)]),
}


def torch_fns():
    import torch
    import torch.nn.functional as F

    def cw_ce(x, t):
        p = torch.softmax(x, dim=1)
        conf = p.max(dim=1).values.detach()
        w = torch.where(conf >= 0.7, conf * 0.99 ** 10.0, torch.zeros_like(conf))
        return (w * F.cross_entropy(x, t, reduction="none")).mean()

    def focal(x, t):
        logpt = F.log_softmax(x, dim=1).gather(1, t[:, None]).squeeze(1)
        return (-((1.0 - logpt.exp()) ** 2.0) * logpt).mean()

    def infonce(u, v):
        logits = F.normalize(u, dim=1) @ F.normalize(v, dim=1).T / 0.07
        labels = torch.arange(u.shape[0], device=u.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

    def cox(risk, time, event):
        order = torch.argsort(time, descending=True)
        r = risk[order]
        ev = event[order].float()
        return -(ev * (r - torch.logcumsumexp(r, dim=0))).sum() / ev.sum()

    return {"cw_ce": (cw_ce, 1), "focal": (focal, 1), "infonce": (infonce, 2), "cox": (cox, 1)}


def torch_inputs(name, d):
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    if name in ("cw_ce", "focal"):
        return [torch.randn(d["N"], d["C"], generator=g), torch.randint(0, d["C"], (d["N"],), generator=g)]
    if name == "infonce":
        return [torch.randn(d["N"], d["D"], generator=g), torch.randn(d["N"], d["D"], generator=g)]
    return [torch.randn(d["N"], generator=g), torch.randperm(d["N"], generator=g).float(),
            torch.rand(d["N"], generator=g) < 0.3]


def time_torch(fn, ngrad, host_args, dev, iters, copies):
    """Median ms of forward + autograd.grad. copies: the inputs start on the host and the
    gradients come back to it (what `lossc bench` measures for a device); otherwise
    they stay on the device."""
    import torch

    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    dev_args = [t.to(dev) for t in host_args]

    def step():
        args = [t.to(dev) for t in host_args] if copies else dev_args
        leaves = [x.detach().requires_grad_(True) for x in args[:ngrad]]
        val = fn(*leaves, *args[ngrad:])
        grads = torch.autograd.grad(val, leaves)
        if copies:
            [g.cpu() for g in grads]
            val.item()
        sync()

    t0 = time.perf_counter()
    step()
    first = (time.perf_counter() - t0) * 1e3
    step()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts), first


def bench(a, env, lossc):
    rows = []
    try:
        import torch

        fns = torch_fns()
        have_torch = True
        compiled = {}
    except ImportError:
        have_torch = False
    for name, (file, dev_dims, small_dims) in CASES.items():
        for d in (dev_dims if a.sizes == "device" else small_dims):
            label = ",".join(f"{k}={v}" for k, v in d.items())
            row = {"case": name, "dims": label}
            cmd = [lossc, "bench", os.path.join(a.bundle, "bench", file), "--dims", label,
                   "--backend", "candle", "--device", a.device, "--iters", str(a.iters),
                   "--json", "--no-color"]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
            if p.returncode == 0:
                j = json.loads(p.stdout.strip().splitlines()[-1])
                row["candle"] = f"{j['median_ms']:.2f}"
            else:
                msg = p.stderr.strip().splitlines()
                row["candle"] = "error"
                print(f"bench {name} {label} candle: exit {p.returncode}: {' '.join(msg)[-300:]}")
            if have_torch:
                fn, ngrad = fns[name]
                host = torch_inputs(name, d)
                try:
                    row["torch"] = "%.2f" % time_torch(fn, ngrad, host, a.device, a.iters, False)[0]
                    row["torch+copies"] = "%.2f" % time_torch(fn, ngrad, host, a.device, a.iters, True)[0]
                    if name not in compiled:
                        compiled[name] = torch.compile(fn, dynamic=False)
                    med, first = time_torch(compiled[name], ngrad, host, a.device, a.iters, False)
                    row["torch.compile"] = f"{med:.2f}"
                    row["compile first"] = f"{first:.0f}"
                except Exception as e:
                    print(f"bench {name} {label} torch: {type(e).__name__}: {str(e)[:300]}")
                    row.setdefault("torch", "error")
                    row.setdefault("torch.compile", "error")
            rows.append(row)
    cols = ["case", "dims", "candle", "torch+copies", "torch", "torch.compile", "compile first"]
    if not have_torch:
        cols = ["case", "dims", "candle"]
    print(f"\nbenchmark on {a.device}: median ms of forward + gradients, {a.iters} calls after warm-up")
    print("candle: `lossc bench --backend candle` (inputs copied to the device and the gradients back on every call);")
    print("torch+copies: the same copies around PyTorch eager; torch / torch.compile: inputs resident on the device")
    print_table(cols, [[r.get(c, "-") for c in cols] for r in rows])
    bad = any(r.get("candle") == "error" for r in rows)
    note = f"{len(rows)} cases" + ("" if have_torch else ", no torch: candle only")
    return ("FAIL" if bad else "ok"), note


def print_table(cols, rows):
    w = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(cols)) + " |")
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for r in rows:
        print("| " + " | ".join(str(v).ljust(w[i]) for i, v in enumerate(r)) + " |")


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--lossc", default=None, help="default: BUNDLE/bin/lossc")
    ap.add_argument("--parts", default="parity,conformance,train,export,bench")
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--sizes", choices=["device", "small"], default="device")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "losslang-gpu-check"),
                    help="where the binaries and libraries are unpacked")
    a = ap.parse_args()
    a.bundle = os.path.abspath(a.bundle)
    global BUNDLE_LIB
    work = os.path.abspath(a.work)
    a.bin = unpack(os.path.join(a.bundle, "bin"), os.path.join(work, "bin"))
    BUNDLE_LIB = unpack(os.path.join(a.bundle, "lib"), os.path.join(work, "lib"))
    lossc = os.path.abspath(a.lossc or os.path.join(a.bin, "lossc"))
    parts = [p for p in a.parts.split(",") if p]
    env = dict(os.environ)
    # candle's kernels are PTX, compiled by the driver when first loaded; its cache
    # (~/.nv/ComputeCache, 256 MiB by default) keeps them for the next lossc process.
    env.setdefault("CUDA_CACHE_MAXSIZE", str(1 << 30))

    info = gpu_name()
    print(f"gpu-check: device {a.device}" + (f" ({info})" if info else "") + f", lossc {lossc}")
    results = []
    added, missing = resolve_libs(lossc, env)
    for d in added:
        print(f"gpu-check: libraries from {d}")
    if missing:
        print(f"gpu-check: lossc cannot load {', '.join(missing)} (docs/candle.md: the device needs "
              "the driver (R580+) and the CUDA 13 cuBLAS, cuRAND, NVRTC and runtime libraries)")
        results.append(("libraries", "FAIL", "missing " + ", ".join(missing)))
        parts = [p for p in parts if p == "export"]
    for part in parts:
        print(f"\n== {part}")
        t0 = time.time()
        if part == "parity":
            st, msg = parity(a, env)
        elif part == "conformance":
            st, msg = conformance(a, env, lossc)
        elif part == "train":
            tenv = dict(env)
            exe = os.path.join(a.bin, "train_noisy_labels")
            if os.path.exists(exe):
                resolve_libs(exe, tenv)
            st, msg = train(a, tenv)
        elif part == "export":
            st, msg = export(a)
            print(msg)
        elif part == "bench":
            st, msg = bench(a, env, lossc)
        else:
            st, msg = "FAIL", f"unknown part {part}"
        results.append((part, st, f"{msg} [{time.time() - t0:.0f} s]"))

    print(f"\n== summary (candle on {a.device})")
    print_table(["part", "result", "details"], [list(r) for r in results])
    sys.exit(1 if any(st == "FAIL" for _, st, _ in results) else 0)


if __name__ == "__main__":
    main()
