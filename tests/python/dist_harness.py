"""Multi-process gloo worlds for the distributed tests.

``run_world(world, "module:function", ...)`` starts ``world`` processes
(spawn), each joining one gloo process group over a file store, and calls
``function(ctx)`` in each; the function runs named checks
(``ctx.check(name, fn, *args)``) and the results of every rank come back to
the test, which fails listing each failed check with its traceback. Several
checks share one world: starting processes (importing torch and
transformers) costs more than most checks.
"""
from __future__ import annotations

import datetime
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
_PY = os.path.normpath(os.path.join(_HERE, "..", "..", "python"))


class Ctx:
    """What a rank's function gets: its rank, the world size, and ``check``."""

    def __init__(self, rank: int, world: int, args: Dict[str, Any]) -> None:
        self.rank = rank
        self.world = world
        self.args = args
        self.results: Dict[str, str] = {}
        self.info: Dict[str, Any] = {}

    def check(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Runs ``fn``; records "ok" or the traceback under ``name``."""
        try:
            out = fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - recorded, reported by the test
            self.results[name] = traceback.format_exc()
            return None
        self.results[name] = "ok"
        return out


def _worker(rank: int, world: int, target: str, store: str, out_dir: str,
            args: Dict[str, Any], backend: str, fake: Optional[Tuple[int, int]]) -> None:
    for p in (_PY, _HERE):
        if p not in sys.path:
            sys.path.insert(0, p)
    torch.set_num_threads(1)
    out_name = f"{rank}.json"
    if fake is not None:  # one process playing rank fake[0] of fake[1]
        rank, world = fake
    ctx = Ctx(rank, world, args)
    try:
        import torch.distributed as dist
        if fake is not None:
            from torch.testing._internal.distributed.fake_pg import FakeStore
            dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
        else:
            if backend == "nccl":
                torch.cuda.set_device(rank % torch.cuda.device_count())
            dist.init_process_group(backend, init_method="file://" + store, rank=rank,
                                    world_size=world, timeout=datetime.timedelta(seconds=120))
        module_name, fn_name = target.split(":")
        fn = getattr(importlib.import_module(module_name), fn_name)
        fn(ctx)
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        ctx.results["<world>"] = traceback.format_exc()
    with open(os.path.join(out_dir, out_name), "w") as f:
        json.dump({"results": ctx.results, "info": ctx.info}, f)


def run_world(world: int, target: str, timeout: float = 240.0, backend: str = "gloo",
              fake: Optional[Tuple[int, int]] = None, **args: Any) -> List[Dict[str, Any]]:
    """Runs ``target`` ("module:function") on ``world`` ranks of ``backend``
    (gloo by default); returns each rank's ``{"results": ..., "info": ...}``.
    ``fake=(rank, world_size)``: one process (``world`` must be 1) playing
    that rank of torch's fake process group (collectives do nothing; for
    one rank's memory and time)."""
    import multiprocessing
    os.environ.setdefault("USE_LIBUV", "0")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as out_dir:
        store = os.path.join(out_dir, "store")
        procs = [ctx.Process(target=_worker,
                             args=(r, world, target, store, out_dir, args, backend, fake))
                 for r in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(1.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        outs: List[Dict[str, Any]] = []
        for r in range(world):
            path = os.path.join(out_dir, f"{r}.json")
            if not os.path.exists(path):
                outs.append({"results": {"<world>": f"rank {r} wrote nothing (exit code "
                                          f"{procs[r].exitcode}{', timed out' if r in hung else ''})"},
                             "info": {}})
                continue
            with open(path) as f:
                outs.append(json.load(f))
    return outs


def assert_all_ok(outs: List[Dict[str, Any]], expect: Optional[List[str]] = None) -> None:
    """Fails listing every check that failed on any rank; ``expect``: names
    that must have run."""
    failures = []
    for rank, out in enumerate(outs):
        for name, result in out["results"].items():
            if result != "ok":
                failures.append(f"--- rank {rank}: {name}\n{result}")
        for name in expect or []:
            if name not in out["results"]:
                failures.append(f"--- rank {rank}: {name} did not run")
    assert not failures, "\n".join(failures)


def collective_count() -> int:
    """Collectives the gloo backends of every process group of this process
    have run (their sequence numbers: meta-tensor "collectives", which an
    engine issues on a meta model, run no backend and are not counted)."""
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d
    total = 0
    for pg in list(c10d._world.pg_map.keys()):
        for device in ("cpu", "cuda"):
            try:
                backend = pg._get_backend(torch.device(device))
                total += backend._get_sequence_number_for_group()
            except Exception:  # noqa: BLE001 - no backend for that device
                continue
    assert dist.is_initialized()
    return total


def vm_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Resets this process's RSS high-water mark (VmHWM); False where the
    kernel does not let us."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
