"""One loss over many ranks: the exported torch modules under torch.distributed
(gloo on CPU, 2 and 3 processes on loopback, uneven shards). On every rank the
loss and the new state equal the full batch's and each gradient is the rank's
rows of the full-batch gradient, for every stdlib loss and conformance case
whose batch can be split; a data error on one rank raises on every rank; under
DistributedDataParallel the parameter gradients equal the full-batch ones. Every
process has a time limit: nothing hangs."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import pytest
from conftest import STDLIB, all_cases, check_step, export_module, iter_steps, stdlib_names

torch = pytest.importorskip("torch")

TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shards(n: int, world: int) -> List[int]:
    """Uneven shards of n rows, none empty (the same split as the Rust simulation)."""
    if world == 2:
        return [n - n // 3, n // 3]
    a = n // 2
    b = (n - a) // 2
    return [a, b, n - a - b]


def _worker(rank: int, world: int, port: int, out_dir: str, job: str, args: Dict[str, Any]) -> None:
    import torch.distributed as dist

    sys.path.insert(0, str(Path(__file__).parent))
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=120),
        )
        result = JOBS[job](rank, world, args)
        dist.destroy_process_group()
    except BaseException as e:  # reported to the parent, never swallowed
        result = {"crash": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def run_ranks(world: int, job: str, tmp: Path, **args: Any) -> List[Dict[str, Any]]:
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, str(tmp), job, args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} did not finish in {TIMEOUT} s"
    out = []
    for r in range(world):
        res = json.loads((tmp / f"rank{r}.json").read_text())
        assert "crash" not in res, f"rank {r}: {res['crash']}"
        out.append(res)
    return out


def _local_rows(mod: Any, data: Dict[str, np.ndarray], rank: int, world: int):
    """This rank's shard of every input that has the batch dim; the rest replicated."""
    n = None
    for d in mod.SIGNATURE["inputs"]:
        if mod._BATCH in d["shape"]:
            n = data[d["name"]].shape[d["shape"].index(mod._BATCH)]
            break
    sizes = shards(n, world)
    off = sum(sizes[:rank])
    out, where = {}, {}
    for d in mod.SIGNATURE["inputs"]:
        v = data[d["name"]]
        if mod._BATCH in d["shape"]:
            ax = d["shape"].index(mod._BATCH)
            v = np.take(v, np.arange(off, off + sizes[rank]), axis=ax)
            where[d["name"]] = (ax, off, sizes[rank])
        out[d["name"]] = v
    return out, where, n


def _job_conformance(rank: int, world: int, args: Dict[str, Any]) -> Dict[str, Any]:
    import torch.distributed as dist

    export_dir = Path(args["export_dir"])
    passed: Dict[str, int] = {}
    failed: List[str] = []
    bytes_per_call: Dict[str, int] = {}
    for loss, case in all_cases():
        mod = export_module(STDLIB / f"{loss}.loss", "torch", export_dir, name=f"{loss}_r{rank}")
        diff = {d["name"] for d in mod.SIGNATURE["inputs"] if d["diff"]}
        state = None
        ok = True
        for data in iter_steps(loss, case):
            local, where, n = _local_rows(mod, data["inputs"], rank, world)
            if n < world:
                ok = None
                break
            if state is None:
                state = {k: torch.as_tensor(np.asarray(v)) for k, v in data["state"].items()}
            inputs = {}
            for k, v in local.items():
                t = torch.from_numpy(np.ascontiguousarray(v))
                inputs[k] = t.requires_grad_(True) if k in diff else t
            value, new_state, _ = mod.loss_fn(inputs, data["params"], state, group=dist.group.WORLD)
            value.backward()
            sent = mod._LAST_CALL["dist"].bytes
            grads = {}
            for k in diff:
                if inputs[k].grad is None:
                    continue
                grads[k] = inputs[k].grad.numpy()
            # the expected gradient is the full batch's: compare this rank's rows
            sliced = dict(data)
            sliced["grads"] = {}
            for k, g in data["grads"].items():
                if k in where:
                    ax, off, rows = where[k]
                    g = np.take(g, np.arange(off, off + rows), axis=ax)
                sliced["grads"][k] = g
            try:
                check_step(
                    value.detach().numpy(), grads, {k: v.numpy() for k, v in new_state.items()}, sliced
                )
            except AssertionError as e:
                failed.append(f"{loss}/{case}: {e}")
                ok = False
                break
            state = new_state
            bytes_per_call[loss] = max(bytes_per_call.get(loss, 0), sent)
        if ok:
            passed[loss] = passed.get(loss, 0) + 1
    return {"passed": passed, "failed": failed, "bytes": bytes_per_call}


def _job_fault(rank: int, world: int, args: Dict[str, Any]) -> Dict[str, Any]:
    import torch.distributed as dist

    mod = export_module(
        STDLIB / "cross_entropy.loss", "torch", Path(args["export_dir"]), name=f"ce_fault_r{rank}"
    )
    target = torch.tensor([0, 1, 2, 1]) if rank == 0 else torch.tensor([2, 9, 0])
    logits = torch.zeros(len(target), 3)
    try:
        mod.loss_fn({"logits": logits, "target": target, "weight": torch.ones(3)}, group=dist.group.WORLD)
    except ValueError as e:
        first = str(e)
    else:
        first = "no error"
    # a shape error on one rank (caught before any collective) is agreed on too
    w = torch.ones(3) if rank == 0 else torch.ones(4)
    try:
        mod.loss_fn(
            {"logits": logits, "target": torch.zeros(len(target), dtype=torch.int64), "weight": w},
            group=dist.group.WORLD,
        )
    except ValueError as e:
        second = str(e)
    else:
        second = "no error"
    return {"first": first, "second": second}


def _job_ddp(rank: int, world: int, args: Dict[str, Any]) -> Dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    mod = export_module(
        STDLIB / "cross_entropy.loss", "torch", Path(args["export_dir"]), name=f"ce_ddp_r{rank}"
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(11, 6, generator=gen)
    y = torch.randint(0, 4, (11,), generator=gen)
    weight = torch.rand(4, generator=gen) + 0.5
    torch.manual_seed(1)
    model = torch.nn.Linear(6, 4)
    full = torch.nn.Linear(6, 4)
    full.load_state_dict(model.state_dict())
    # single process, full batch: the reference
    ref = mod.Loss(label_smoothing=0.1)
    ref(full(x), y, weight).backward()
    sizes = shards(11, world)
    off = sum(sizes[:rank])
    rows = slice(off, off + sizes[rank])
    ddp = DDP(model)
    crit = mod.Loss(distributed=True, ddp=True, label_smoothing=0.1)
    loss = crit(ddp(x[rows]), y[rows], weight)
    loss.backward()
    diffs = [float((p.grad - q.grad).abs().max()) for p, q in zip(model.parameters(), full.parameters())]
    return {"loss": float(loss.detach()), "ref_loss": float(ref(full(x), y, weight).detach()), "diffs": diffs}


JOBS: Dict[str, Callable[[int, int, Dict[str, Any]], Dict[str, Any]]] = {
    "conformance": _job_conformance,
    "fault": _job_fault,
    "ddp": _job_ddp,
}


@pytest.mark.parametrize("world", [2, 3])
def test_every_stdlib_loss_is_exact_over_ranks(world: int, tmp_path: Path, export_dir: Path) -> None:
    results = run_ranks(world, "conformance", tmp_path, export_dir=str(export_dir))
    for r, res in enumerate(results):
        assert not res["failed"], f"rank {r}:\n" + "\n".join(res["failed"])
    passed = results[0]["passed"]
    assert set(passed) == set(stdlib_names()), sorted(set(stdlib_names()) - set(passed))
    lines = [
        f"{k}: {passed[k]} cases, {results[0]['bytes'].get(k, 0)} bytes sent by rank 0"
        for k in sorted(passed)
    ]
    print(f"\n{world} ranks, {sum(passed.values())} cases:\n" + "\n".join(lines))
    table = Path(os.environ.get("LOSSLANG_COMM_TABLE", tmp_path / "comm.json"))
    table.write_text(json.dumps({"world": world, "passed": passed, "bytes": results[0]["bytes"]}))


def test_a_data_error_on_one_rank_raises_on_every_rank(tmp_path: Path, export_dir: Path) -> None:
    results = run_ranks(2, "fault", tmp_path, export_dir=str(export_dir))
    for res in results:
        assert "index 9 out of range for C=3 at target[1]" in res["first"], res["first"]
        assert "rank 1:" in res["first"]
        assert "input `weight` axis 0 has size 4, but C = 3" in res["second"], res["second"]


def test_ddp_gradients_equal_the_full_batch(tmp_path: Path, export_dir: Path) -> None:
    for res in run_ranks(2, "ddp", tmp_path, export_dir=str(export_dir)):
        assert abs(res["loss"] - res["ref_loss"]) <= 1e-6 * max(1.0, abs(res["ref_loss"]))
        assert max(res["diffs"]) <= 1e-6, res["diffs"]
