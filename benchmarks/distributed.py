#!/usr/bin/env python3
"""Distributed preparation benchmark: time and per-rank peak memory until a
Hugging Face Llama is ready for its first FSDP2 (or TP x FSDP2) step, four
ways side by side, each in fresh processes:

- ``seam``:  built lazily, then torch's ``fully_shard`` per block and root
  inside ``lazyinit.distributed.deferred``: each rank computes its pieces
  (eager values);
- ``eager``: built eagerly on the device, then ``fully_shard`` (eager values);
- ``meta``:  built on ``meta``, ``fully_shard``, ``to_empty`` and an init
  function run on the shards (torchtitan's way: the values differ from
  eager's, and with the world size);
- ``plain``: built lazily, then ``fully_shard`` on the lazy model itself
  (every tensor materialized whole, then sharded; eager values).

Per variant: the slowest rank's time from the start of construction to the
model being ready, the largest per-rank peak above the process's memory
before construction (CPU: RSS high-water mark, reset through
/proc/self/clear_refs; CUDA: ``max_memory_allocated``), the rank's local
bytes, and whether the local pieces equal the eager variant's (a checksum of
every rank's pieces).

CPU (gloo, ``--world`` processes)::

    .venv/bin/python benchmarks/distributed.py --shape 1b --world 4 --dtype bfloat16

GPU, one rank of 8 simulated on one GPU with torch's fake process group (no
communication; the rank's pieces, memory and time are real)::

    python benchmarks/distributed.py --device cuda --fake-rank 3 --world 8 --shape 7b \\
        --dtype bfloat16
    python benchmarks/distributed.py --device cuda --fake-rank 3 --world 8 --tp 2 \\
        --shape 70b --dtype bfloat16 --variants seam,meta,plain
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

SHAPES: Dict[str, Dict[str, int]] = {
    # a test shape, every path of the big ones (GQA, odd vocabulary)
    "tiny": dict(vocab_size=131, hidden_size=64, intermediate_size=100, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4),
    # TinyLlama-1.1B's shape
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4),
    "7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
               num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
    "70b": dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672,
                num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8),
}


def _config(shape: str):
    import transformers
    return transformers.LlamaConfig(max_position_embeddings=2048, **SHAPES[shape])


def _build(cfg, dtype):
    import torch
    import transformers
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return transformers.LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)


def _tp_plan(model) -> Dict[str, Any]:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel
    plan: Dict[str, Any] = {}
    for i in range(len(model.model.layers)):
        p = f"model.layers.{i}."
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "mlp.gate_proj", "mlp.up_proj"):
            plan[p + name] = ColwiseParallel()
        plan[p + "self_attn.o_proj"] = RowwiseParallel()
        plan[p + "mlp.down_proj"] = RowwiseParallel()
    return plan


def _meta_init(model, cfg) -> None:
    """torchtitan-style init on the (sharded) model after ``to_empty``:
    normal(0, 0.02) weights, ones for norms, RoPE frequencies recomputed.
    Values differ from eager's (DTensor random ops on the shards)."""
    import torch
    import torch.nn as nn
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=cfg.initializer_range)
            elif type(m).__name__.endswith("RMSNorm"):
                nn.init.ones_(m.weight)
            elif hasattr(m, "inv_freq"):
                inv, _ = m.compute_default_rope_parameters(cfg, m.inv_freq.device)
                m.inv_freq.copy_(inv)
                m.original_inv_freq.copy_(inv)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _local_pieces(model):
    seen = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        yield t._local_tensor if hasattr(t, "_local_tensor") else t.detach()


def _checksum(model) -> int:
    import torch
    total = 0
    for i, t in enumerate(_local_pieces(model)):
        flat = t.contiguous().view(-1)
        if flat.is_floating_point():
            flat = flat.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[flat.element_size()])
        s = 0
        for start in range(0, flat.numel(), 1 << 24):
            part = flat[start:start + (1 << 24)].to(torch.int64)
            w = torch.arange(start, start + part.numel(), device=part.device) % 65521 + 1
            s += int((part * w).sum())
        total = (total * 1000003 + s + i) % (1 << 61)
    return total


def rank_main(rank: int, world: int, opts: Dict[str, Any], out_dir: str) -> None:
    import torch
    import torch.distributed as dist
    torch.set_num_threads(opts["threads"])
    import lazyinit
    import lazyinit.distributed as ld
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    device = opts["device"]
    if opts["fake_rank"] is not None:
        from torch.testing._internal.distributed.fake_pg import FakeStore
        rank = opts["fake_rank"]
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    else:
        if device == "cuda":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group("nccl" if device == "cuda" else "gloo",
                                init_method="file://" + os.path.join(out_dir, "store"),
                                rank=rank, world_size=world)
    tp = opts["tp"]
    if tp > 1:
        mesh = init_device_mesh(device, (world // tp, tp), mesh_dim_names=("dp", "tp"))
        dp_mesh, tp_mesh = mesh["dp"], mesh["tp"]
    else:
        dp_mesh, tp_mesh = init_device_mesh(device, (world,)), None
    dtype = getattr(torch, opts["dtype"])
    cfg = _config(opts["shape"])
    variant = opts["variant"]

    import inspect
    tp_kw = {}
    if "src_data_rank" in inspect.signature(parallelize_module).parameters:
        # Every rank built the same values: no scatter from rank 0 (and
        # Debian's gloo has no 16-bit scatter).
        tp_kw["src_data_rank"] = None

    def shard(model) -> None:
        if tp_mesh is not None:
            parallelize_module(model, tp_mesh, _tp_plan(model), **tp_kw)
        for block in model.model.layers:
            fully_shard(block, mesh=dp_mesh)
        fully_shard(model, mesh=dp_mesh)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    import transformers  # noqa: F401 - imported before the clock starts
    _ = transformers.LlamaForCausalLM
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _rss_kib("VmRSS") * 1024
    torch.manual_seed(0)
    start = time.perf_counter()
    report = None
    if variant == "seam":
        with lazyinit.LazyInitContext():
            model = _build(cfg, dtype)
        with ld.deferred(model, device) as d:
            shard(model)
        report = d.report
    elif variant == "plain":
        with lazyinit.LazyInitContext():
            model = _build(cfg, dtype)
        shard(model)
        lazyinit.materialize(model, device)  # anything left lazy (buffers)
    elif variant == "eager":
        with torch.device(device):
            model = _build(cfg, dtype)
        shard(model)
    elif variant == "meta":
        with torch.device("meta"):
            model = _build(cfg, dtype)
        shard(model)
        model.to_empty(device=device)
        _meta_init(model, cfg)
    else:
        raise ValueError(variant)
    sync()
    seconds = time.perf_counter() - start
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_kib("VmHWM") * 1024 - base
    local = sum(t.numel() * t.element_size() for t in _local_pieces(model))
    out = dict(rank=rank, seconds=seconds, peak=peak, local=local,
               checksum=_checksum(model) if opts["checksum"] else None)
    if report is not None:
        out.update(pushed_down=report.pushed_down, fallbacks=report.fallbacks,
                   fill_seconds=report.seconds)
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
        json.dump(out, f)
    if opts["fake_rank"] is None:
        dist.barrier()
    dist.destroy_process_group()


def _spawn_entry(rank: int, world: int, opts: Dict[str, Any], out_dir: str) -> None:
    rank_main(rank, world, opts, out_dir)


def run_variant(opts: Dict[str, Any]) -> List[Dict[str, Any]]:
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as out_dir:
        n = 1 if opts["fake_rank"] is not None else opts["world"]
        procs = [ctx.Process(target=_spawn_entry, args=(r, opts["world"], opts, out_dir))
                 for r in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"variant {opts['variant']}: a rank exited with {bad}")
        outs = []
        for name in sorted(os.listdir(out_dir)):
            if name.endswith(".json"):
                with open(os.path.join(out_dir, name)) as f:
                    outs.append(json.load(f))
    return outs


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="1b", choices=sorted(SHAPES))
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size (TP x FSDP2)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--fake-rank", type=int, default=None,
                    help="simulate this one rank of --world with torch's fake process group")
    ap.add_argument("--variants", default="seam,eager,meta,plain")
    ap.add_argument("--threads", type=int, default=1, help="torch threads a rank (CPU)")
    ap.add_argument("--no-checksum", action="store_true")
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args(argv)
    os.environ.setdefault("USE_LIBUV", "0")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch
    where = (f"one rank ({args.fake_rank}) of {args.world}, fake process group"
             if args.fake_rank is not None else f"{args.world} ranks")
    print(f"torch {torch.__version__}, {args.device}, {where}, shape {args.shape}, "
          f"{args.dtype}, {'TP %d x ' % args.tp if args.tp > 1 else ''}FSDP2, "
          f"{args.threads} thread(s) a rank")
    results: Dict[str, List[Dict[str, Any]]] = {}
    for variant in args.variants.split(","):
        opts = dict(vars(args), variant=variant, checksum=not args.no_checksum)
        results[variant] = run_variant(opts)
    ref = results.get("eager") or results.get("seam")
    print(f"{'variant':8} {'ready (s)':>10} {'peak/rank (MiB)':>16} {'local (MiB)':>12} "
          f"{'bound':>8}  values")
    for variant, outs in results.items():
        seconds = max(o["seconds"] for o in outs)
        peak = max(o["peak"] for o in outs)
        local = max(o["local"] for o in outs)
        bound = 1.1 * local + (64 << 20)
        if args.no_checksum or ref is None:
            same = "?"
        else:
            same = "eager" if [o["checksum"] for o in outs] == [o["checksum"] for o in ref] \
                else "differ"
        extra = ""
        if "pushed_down" in outs[0]:
            extra = f"  (pieces pushed down {outs[0]['pushed_down']}, fallbacks " \
                    f"{outs[0]['fallbacks']})"
        print(f"{variant:8} {seconds:10.2f} {peak / 2**20:16.0f} {local / 2**20:12.0f} "
              f"{bound / 2**20:8.0f}  {same}{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), results=results), f, indent=1)


if __name__ == "__main__":
    main()
