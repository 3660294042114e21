"""Train a small classifier with the CW-BASS loss exported to PyTorch.

    cargo build --release
    python3 examples/python/train_cw_bass_torch.py

The data: four Gaussian classes in 8 dimensions, 4,000 training points of which
only 2% carry a label and 30% of those labels are wrong. A two-layer network is
trained twice from the same initialisation: once with `F.cross_entropy` on the
labelled points (all it can use), once with `stdlib/cw_bass.loss` exported by
`lossc export --target torch`, which also learns from the unlabelled points
through confidence-weighted pseudo labels. The exported `Loss` module carries
the loss's state (the EMA of the confidence and the step) in its buffers; the
script prints the loss, the threshold report and that state as training goes,
then both models' accuracy on a clean test set.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]


def export(loss: str, out_dir: Path):
    lossc = ROOT / "target" / "release" / "lossc"
    out = out_dir / f"{loss}_torch.py"
    subprocess.run(
        [str(lossc), "export", str(ROOT / "stdlib" / f"{loss}.loss"), "--target", "torch", "-o", str(out)],
        check=True,
    )
    spec = importlib.util.spec_from_file_location(f"{loss}_torch", out)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CENTERS = torch.randn(4, 8, generator=torch.Generator().manual_seed(3)) * 1.2


def make_data(n: int, gen: torch.Generator):
    centers = CENTERS
    y = torch.randint(0, len(centers), (n,), generator=gen)
    x = centers[y] + torch.randn(n, centers.shape[1], generator=gen)
    return x, y


def model(gen_seed: int) -> torch.nn.Module:
    torch.manual_seed(gen_seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y_true = make_data(4000, gen)
    x_test, y_test = make_data(2000, torch.Generator().manual_seed(1))
    # 2% labelled, 30% of those labels flipped to a random other class
    labeled = torch.rand(len(x), generator=gen) < 0.02
    y = y_true.clone()
    flip = labeled & (torch.rand(len(x), generator=gen) < 0.3)
    y[flip] = (y[flip] + torch.randint(1, 4, (int(flip.sum()),), generator=gen)) % 4
    target = torch.where(labeled, y, torch.full_like(y, 255))  # unlabelled targets are never read
    boundary = torch.zeros(len(x), dtype=torch.bool)
    print(f"{len(x)} training points, {int(labeled.sum())} labelled, {int(flip.sum())} of them mislabelled")

    steps, batch = 300, 512
    with tempfile.TemporaryDirectory() as tmp:
        mod = export("cw_bass", Path(tmp))

        # the baseline: cross-entropy on the labelled points only
        net_ce = model(7)
        opt = torch.optim.SGD(net_ce.parameters(), lr=0.1, momentum=0.9)
        xl, yl = x[labeled], y[labeled]
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net_ce(xl), yl).backward()
            opt.step()

        # CW-BASS on every point; the module's buffers carry conf_ema and step
        net = model(7)
        crit = mod.Loss(ema_momentum=0.9, base_threshold=0.9, min_threshold=0.5, max_threshold=0.95)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        order = torch.Generator().manual_seed(2)
        print(f"{'step':>5} {'loss':>8} {'threshold':>9} {'kept':>5} {'conf_ema':>8}")
        for step in range(steps):
            idx = torch.randperm(len(x), generator=order)[:batch]
            opt.zero_grad()
            loss = crit(net(x[idx]), target[idx], labeled[idx], boundary[idx])
            loss.backward()
            opt.step()
            if step % 50 == 0 or step == steps - 1:
                r = crit.last_reports
                print(
                    f"{step:5d} {float(loss.detach()):8.4f} {float(r['threshold']):9.4f} "
                    f"{int(r['kept']):5d} {float(crit.conf_ema):8.4f}"
                )
        print(f"state after training: step={int(crit.step)}, conf_ema={float(crit.conf_ema):.4f}")
        print(f"test accuracy, cross-entropy on labelled points: {accuracy(net_ce, x_test, y_test):.3f}")
        print(f"test accuracy, CW-BASS (exported to torch):     {accuracy(net, x_test, y_test):.3f}")


if __name__ == "__main__":
    sys.exit(main())
