#!/usr/bin/env python3
"""Build a Hugging Face Llama lazily, shard it with FSDP2 (optionally tensor
parallel x FSDP2 on a 2-D mesh) so that each rank computes only its own
pieces, train a few steps, and print each rank's memory.

The pieces are exactly those of the eagerly built model (same seed) sliced
as FSDP2 slices it; no rank ever holds the whole model.

On GPUs (NCCL), one process per GPU::

    torchrun --nproc-per-node 8 examples/fsdp2_llama.py --shape 1b --tp 2

On the CPU (gloo), the script starts its own processes (Debian's torch has
no libuv, which torchrun's rendezvous needs)::

    .venv/bin/python examples/fsdp2_llama.py --nproc 4
    .venv/bin/python examples/fsdp2_llama.py --nproc 4 --tp 2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Dict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

SHAPES: Dict[str, Dict[str, int]] = {
    "small": dict(vocab_size=8003, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=4),
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4),
    "7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
               num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
}


def tp_plan(model) -> Dict[str, Any]:
    """Megatron-style tensor parallelism for every decoder layer."""
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


def peak_memory(device: str) -> str:
    import torch
    if device.startswith("cuda"):
        return f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB GPU (peak allocated)"
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return f"{hwm / 1024:.0f} MiB RSS (process peak)"


def train(rank: int, world: int, args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    import transformers
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    import lazyinit
    import lazyinit.distributed as ld

    device = args.device
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
        device = f"cuda:{torch.cuda.current_device()}"
    if args.tp > 1:
        mesh = init_device_mesh(device.split(":")[0], (world // args.tp, args.tp),
                                mesh_dim_names=("dp", "tp"))
        dp_mesh, tp_mesh, dp_rank = mesh["dp"], mesh["tp"], mesh.get_coordinate()[0]
    else:
        dp_mesh, tp_mesh, dp_rank = init_device_mesh(device.split(":")[0], (world,)), None, rank

    cfg = transformers.LlamaConfig(max_position_embeddings=2048, **SHAPES[args.shape])
    torch.manual_seed(0)  # the same seed on every rank: one model
    start = time.perf_counter()
    with lazyinit.LazyInitContext():
        model = transformers.LlamaForCausalLM(cfg)  # nothing allocated
    built = time.perf_counter()
    with ld.deferred(model, device) as d:          # torch's own APIs, on a meta model
        if tp_mesh is not None:
            parallelize_module(model, tp_mesh, tp_plan(model))
        for block in model.model.layers:
            fully_shard(block, mesh=dp_mesh)
        fully_shard(model, mesh=dp_mesh)
    ready = time.perf_counter()
    params = sum(p.numel() for p in model.parameters())  # DTensors count their global size
    print(f"[rank {rank}] built lazily in {built - start:.2f} s, sharded and filled in "
          f"{ready - built:.2f} s: {d.report.local_bytes / 2**20:.0f} MiB local of "
          f"{params / 1e9:.3f} B parameters ({d.report.pieces} pieces, "
          f"{d.report.fallbacks} computed whole); {peak_memory(device)}", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(100 + dp_rank)  # one batch per data-parallel rank
    for step in range(args.steps):
        ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g).to(device)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        print(f"[rank {rank}] step {step}: loss {loss.item():.4f}", flush=True)
    print(f"[rank {rank}] after training: {peak_memory(device)}", flush=True)
    dist.destroy_process_group()


def _spawned(rank: int, world: int, store: str, args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world)
    train(rank, world, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="small", choices=sorted(SHAPES))
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size (TP x FSDP2)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--nproc", type=int, default=2, help="CPU processes (without torchrun)")
    ap.add_argument("--device", default=None, help="default: cuda under torchrun, else cpu")
    args = ap.parse_args()
    if "RANK" in os.environ:  # torchrun
        import torch
        import torch.distributed as dist
        args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        train(dist.get_rank(), dist.get_world_size(), args)
        return
    args.device = args.device or "cpu"
    os.environ.setdefault("USE_LIBUV", "0")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_spawned, args=(args.nproc, os.path.join(tmp, "store"), args),
                 nprocs=args.nproc)


if __name__ == "__main__":
    main()
