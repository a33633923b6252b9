#!/usr/bin/env python3
"""Materialize-on-shard benchmark: a Llama-shaped model (tests/python/models.py)
built lazily, then each rank of a world materializes only its own shards.

Each measurement runs in a fresh process. Per rank: time of
``materialize_module_shards`` for all of that rank's shards (FSDP2-style
``Shard(0, rank, world)`` for every parameter, buffers replicated), and its
peak RSS above the RSS after building the lazy model (peak reset with
/proc/self/clear_refs, Linux). Full materialization of the same shape does
not fit a small machine (7B fp32 is 27 GB), so it is measured on the same
shape cut to 1 and 2 decoder layers and extrapolated linearly to the full
layer count (the embedding, head and norm are the fixed part); its memory is
the parameter bytes themselves.

With ``--device cuda`` the shards and the full model are materialized on
the GPU instead: time with CUDA synchronized, memory as the peak of
``torch.cuda.max_memory_allocated`` above the lazy model's, and the full
model materialized whole (no extrapolation). A rank's time there is a few
milliseconds, and one measurement in a fresh process varies by about 20%:
``--repeat N`` (default 3 on CUDA) measures each rank and the full
materialization in N fresh processes (the ranks round robin) and reports
the median, with the range.

    .venv/bin/python benchmarks/shard.py --shape 7b --world 8
    .venv/bin/python benchmarks/shard.py --shape tiny --world 8 --check   # + equality with eager
    .venv/bin/python benchmarks/shard.py --shape 7b --world 8 --device cuda --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "python"))


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _build(shape: str, layers: int, seed: int, lazy: bool, device: str = "cpu"):
    import torch
    import lazyinit
    from models import Llama, llama_config

    overrides = {} if layers < 0 else {"num_hidden_layers": layers}
    cfg = llama_config(shape, **overrides)
    torch.manual_seed(seed)
    if not lazy:
        if device != "cpu":
            with torch.device(device):
                return Llama(cfg)
        return Llama(cfg)
    with lazyinit.LazyInitContext():
        return Llama(cfg)


def _setup(args) -> None:
    """Threads, dtype, and on CUDA a warm-up: the tiny shape materialized
    whole and by shards, so that one-time costs (kernel modules loaded on
    first launch, allocator and generator set-up) are not what is measured.
    The first large cudaMalloc of a process costs about 0.3 ms more than
    later ones (0.44 ms for 100 MiB, then 0.14-0.19 ms for 1.7 GiB, on an
    H200): one 1 GiB allocation, returned to the driver by empty_cache(),
    pays it here, so the measured run still makes (and times) its own."""
    import torch
    import lazyinit

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(getattr(torch, args.dtype))
    if args.device == "cuda":
        for _ in range(2):
            tiny = _build("tiny", -1, args.seed, lazy=True)
            lazyinit.materialize_module_shards(
                tiny, _placement(tiny, 1, args.world, args.layout), args.device)
            lazyinit.materialize(tiny, args.device, progress=False)
        del tiny
        torch.empty(2**30, dtype=torch.uint8, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        lazyinit.reset_shard_stats()


class _Meter:
    """Seconds, CPU seconds and peak memory above the start of a block:
    RSS on the CPU, torch.cuda.max_memory_allocated on CUDA."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> "_Meter":
        import torch
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            _reset_peak()
            self.base = _rss("VmRSS")
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        import torch
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0
        peak = torch.cuda.max_memory_allocated() if self.device == "cuda" else _rss("VmHWM")
        self.peak_above_base = peak - self.base


LAYOUTS = ("fsdp", "fsdp-bykind", "dim1", "tp2-fsdp")


def _placement(model, rank: int, world: int, layout: str = "fsdp"):
    """Buffers replicated; parameters: "fsdp" Shard(0) (FSDP2 / DTensor),
    through a Python placement function; "fsdp-bykind" the same as a
    ``lazyinit.ByKind`` policy (decided in C++); "dim1" Shard(1) of
    matrices (one storage span per row); "tp2-fsdp" tensor parallel over 2
    on dim 0, then FSDP over world/2 on dim 1. The placements are made once,
    as a plugin would, not once a tensor."""
    import torch
    import lazyinit

    replicate = lazyinit.Replicate()
    dim0 = lazyinit.Shard(0, rank, world)
    if layout == "fsdp-bykind":
        return lazyinit.ByKind(dim0)
    dim1 = lazyinit.Shard(1, rank, world)
    inner = max(world // 2, 1)
    tp_fsdp = [lazyinit.Shard(0, rank // inner, 2), lazyinit.Shard(1, rank % inner, inner)] \
        if world >= 2 else None
    parameter = torch.nn.Parameter

    def fn(name, tensor):
        # type() first: isinstance(t, Parameter) runs Parameter's metaclass
        # check in Python (about 1 us on torch 2.x).
        cls = type(tensor)
        is_param = cls is parameter or (cls is not torch.Tensor and isinstance(tensor, parameter))
        if not is_param or tensor.dim() == 0:
            return replicate
        if tensor.dim() == 1 or layout == "fsdp":
            return dim0
        if layout == "dim1":
            return dim1
        return tp_fsdp
    return fn


def _expected(full, placement):
    import torch
    import lazyinit

    items = placement if isinstance(placement, list) else [placement]
    for p in items:
        if isinstance(p, lazyinit.Shard):
            chunks = torch.chunk(full, p.world_size, p.dim)
            full = (chunks[p.rank] if p.rank < len(chunks)
                    else full.narrow(p.dim, full.shape[p.dim], 0))
    return full


def worker_rank(args) -> Dict:
    import torch
    import lazyinit

    _setup(args)
    model = _build(args.shape, args.layers, args.seed, lazy=True)
    lazyinit.reset_shard_stats()
    with _Meter(args.device) as m:
        shards = lazyinit.materialize_module_shards(
            model, _placement(model, args.rank, args.world, args.layout), args.device)
    shard_bytes = sum(t.numel() * t.element_size() for t in shards.values())
    out = {"rank": args.rank, "seconds": m.seconds, "cpu": m.cpu,
           "peak_above_base": m.peak_above_base, "shard_bytes": shard_bytes,
           "stats": lazyinit.shard_stats()}
    if args.check:
        lazyinit.discard(model)
        eager = _build(args.shape, args.layers, args.seed, lazy=False, device=args.device)
        state = dict(list(eager.named_parameters()) + list(eager.named_buffers()))
        placement = _placement(eager, args.rank, args.world, args.layout)
        for name, piece in shards.items():
            assert torch.equal(piece, _expected(state[name], placement(name, state[name]))), name
        out["checked"] = len(shards)
    return out


def worker_full(args) -> Dict:
    import lazyinit

    _setup(args)
    model = _build(args.shape, args.layers, args.seed, lazy=True)
    with _Meter(args.device) as m:
        lazyinit.materialize(model, args.device, progress=False)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"layers": args.layers, "seconds": m.seconds, "cpu": m.cpu,
            "peak_above_base": m.peak_above_base, "param_bytes": nbytes}


def run_worker(args, **extra) -> Dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker",
           "--shape", args.shape, "--world", str(args.world), "--seed", str(args.seed),
           "--threads", str(args.threads), "--layout", args.layout, "--device", args.device,
           "--dtype", args.dtype]
    for k, v in extra.items():
        cmd += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    if args.check:
        cmd.append("--check")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median_of(runs: List[Dict], digits: int) -> Dict:
    """The run of median time among `runs`, with the range of their times
    ("range", to `digits` decimals as the median is printed) added and the
    worst peak memory of them all."""
    runs = sorted(runs, key=lambda r: r["seconds"])
    out = dict(runs[len(runs) // 2])
    out["peak_above_base"] = max(r["peak_above_base"] for r in runs)
    out["range"] = (f"{runs[0]['seconds']:.{digits}f}-{runs[-1]['seconds']:.{digits}f}"
                    if len(runs) > 1 else "")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--world", type=int, default=8)
    ap.add_argument("--ranks", default="", help="comma-separated (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layout", default="fsdp", choices=LAYOUTS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--check", action="store_true", help="compare with eager (small shapes)")
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--repeat", type=int, default=0,
                    help="fresh processes a measurement, median reported (default: 3 on "
                         "CUDA, 1 on the CPU)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--layers", type=int, default=-1,
                    help="cut the model to this many decoder layers (with --check)")
    ap.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker_full(args) if args.full else worker_rank(args)))
        return 0

    import torch
    from models import llama_config
    mib = 2 ** 20
    cfg = llama_config(args.shape)
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else ""
    print(f"shape {args.shape}, {args.dtype}, world {args.world}, layout {args.layout}, "
          f"device {args.device} {gpu}, torch {torch.__version__}, {os.cpu_count()} cores, "
          f"threads {args.threads}, {time.strftime('%Y-%m-%d', time.gmtime())}")
    ranks = [int(r) for r in args.ranks.split(",")] if args.ranks else list(range(args.world))
    repeat = args.repeat or (3 if args.device == "cuda" else 1)
    memory = "peak CUDA memory" if args.device == "cuda" else "peak RSS"
    seconds = "seconds" if repeat == 1 else f"seconds (median of {repeat} processes)"
    print(f"| rank | {seconds} | range | CPU seconds | {memory} above lazy model, MiB "
          "| shard MiB | within shard + 64 MiB | pushed down | fallbacks | whole |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    digits = 5 if args.device == "cuda" else 3
    # Round robin (every rank once, then again): a slow spell of the machine
    # spreads over ranks instead of making one rank's every run slow.
    runs: Dict[int, List[Dict]] = {r: [] for r in ranks}
    for round_ in range(repeat):
        for r in ranks:
            runs[r].append(run_worker(args, rank=r, layers=args.layers))
            if repeat > 1:
                print(f"round {round_ + 1}/{repeat}: rank {r} {runs[r][-1]['seconds']:.5f} s",
                      file=sys.stderr, flush=True)
    results: List[Dict] = []
    for r in ranks:
        res = _median_of(runs[r], digits)
        results.append(res)
        s = res["stats"]
        within = res["peak_above_base"] <= res["shard_bytes"] + 64 * mib
        print(f"| {r} | {res['seconds']:.{digits}f} | {res['range']} | {res['cpu']:.2f} | "
              f"{res['peak_above_base'] / mib:.0f} | {res['shard_bytes'] / mib:.0f} | "
              f"{'yes' if within else 'NO'} | {s['pushed_down']} | {s['fallbacks']} "
              f"| {s['whole']} |", flush=True)
    if args.skip_full:
        return 0
    worst = max(results, key=lambda r: r["seconds"])
    if args.device == "cuda":
        # The whole model fits one GPU: measured, not extrapolated.
        f = _median_of([run_worker(args, full=True, layers=args.layers)
                        for _ in range(repeat)], digits)
        print(f"full materialization on CUDA: {f['seconds']:.5f} s (range {f['range']}; "
              f"{f['cpu']:.2f} s CPU), "
              f"peak CUDA memory above lazy model {f['peak_above_base'] / mib:.0f} MiB, "
              f"parameters {f['param_bytes'] / mib:.0f} MiB")
        print(f"slowest rank {worst['rank']}: {worst['seconds']:.5f} s "
              f"({worst['seconds'] / f['seconds']:.3f}x the full materialization)")
        return 0
    full = [run_worker(args, full=True, layers=n) for n in (1, 2)]
    per_layer = full[1]["seconds"] - full[0]["seconds"]
    fixed = full[0]["seconds"] - per_layer
    est = fixed + per_layer * cfg.num_hidden_layers
    layer_bytes = full[1]["param_bytes"] - full[0]["param_bytes"]
    full_bytes = full[0]["param_bytes"] - layer_bytes + layer_bytes * cfg.num_hidden_layers
    for f in full:
        print(f"full materialization, {f['layers']} layer(s): {f['seconds']:.1f} s "
              f"({f['cpu']:.1f} s CPU), "
              f"peak RSS above lazy model {f['peak_above_base'] / mib:.0f} MiB, "
              f"parameters {f['param_bytes'] / mib:.0f} MiB")
    print(f"full materialization, {cfg.num_hidden_layers} layers (extrapolated): "
          f"{est:.0f} s, parameters {full_bytes / 2**30:.1f} GiB")
    print(f"slowest rank {worst['rank']}: {worst['seconds']:.1f} s "
          f"({worst['seconds'] / est:.2f}x the full materialization estimate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
