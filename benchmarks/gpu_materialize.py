#!/usr/bin/env python3
"""Building Llama-shaped models on a GPU, side by side in one process:

* eager:   ``with torch.device("cuda"): Llama(cfg)`` (the reference values);
* meta:    ``with torch.device("meta")``, ``to_empty(device="cuda")``, then
           every ``reset_parameters()`` and the model's own ``_init_weights``;
* lazy:    ``with lazyinit.LazyInitContext()`` then ``materialize(m, "cuda")``
           (construction and materialization timed apart, and checked
           ``torch.equal`` to eager);
* floor:   parameter bytes / the rate ``normal_`` writes a 1 GiB buffer.

    python benchmarks/gpu_materialize.py --shapes 1b,7b --dtypes bfloat16,float32 [--hf]

Each figure is the median of ``--repeat`` runs (CUDA synchronized around
each), with the peak of ``torch.cuda.max_memory_allocated`` over the run.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

import lazyinit  # noqa: E402
from models import Llama, llama_config  # noqa: E402

GiB = float(1 << 30)


def _fresh() -> None:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def _timed(fn: Callable[[], object]) -> Tuple[float, object]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, out


def _nbytes(m: nn.Module) -> int:
    seen = {id(t): t for t in list(m.parameters()) + list(m.buffers())}
    return sum(t.numel() * t.element_size() for t in seen.values())


def _reset_all(m: nn.Module) -> None:
    for mod in m.modules():
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    init = getattr(m, "_init_weights", None)
    if init is not None:
        m.apply(init)
    elif hasattr(m, "init_weights"):
        m.init_weights()


def normal_rate(dtype: torch.dtype) -> float:
    """Bytes per second ``normal_`` writes into a 1 GiB buffer."""
    buf = torch.empty(int(GiB) // torch.tensor([], dtype=dtype).element_size(),
                      dtype=dtype, device="cuda")
    buf.normal_()
    times = []
    for _ in range(5):
        t, _ = _timed(buf.normal_)
        times.append(t)
    del buf
    return GiB / statistics.median(times)


def run(build: Callable[[], nn.Module], repeat: int) -> Dict[str, Tuple[float, float]]:
    """Median seconds and peak GiB per method; checks lazy == eager."""
    out: Dict[str, List[Tuple[float, float]]] = {}

    def record(key: str, seconds: float) -> None:
        out.setdefault(key, []).append((seconds, torch.cuda.max_memory_allocated() / GiB))

    for _ in range(repeat):
        # eager and lazy are compared, so both are alive together; meta after
        _fresh()
        torch.manual_seed(0)
        t, eager = _timed(lambda: _with_device("cuda", build))
        record("eager", t)

        torch.manual_seed(0)
        torch.cuda.reset_peak_memory_stats()

        def construct() -> nn.Module:
            with lazyinit.LazyInitContext():
                return build()
        t_build, lazy = _timed(construct)
        record("lazy construct", t_build)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t_mat, _ = _timed(lambda m=lazy: lazyinit.materialize(m, "cuda", progress=False))
        out.setdefault("lazy materialize", []).append(
            (t_mat, (torch.cuda.max_memory_allocated() - base) / GiB))
        record("lazy total", t_build + t_mat)
        ref, got = eager.state_dict(), lazy.state_dict()
        bad = [k for k in ref if not torch.equal(ref[k], got[k])]
        if bad:
            raise SystemExit(f"lazy differs from eager in {len(bad)} tensors, e.g. {bad[:3]}")
        out.setdefault("bytes", []).append((_nbytes(lazy), 0.0))
        del eager, lazy, ref, got

        _fresh()
        torch.manual_seed(0)

        def meta() -> nn.Module:
            m = _with_device("meta", build)
            m = m.to_empty(device="cuda")
            with torch.no_grad():
                _reset_all(m)
            return m
        t, m = _timed(meta)
        record("meta+to_empty+init", t)
        del m
    return {k: (statistics.median(s for s, _ in v), max(p for _, p in v)) for k, v in out.items()}


def _with_device(device: str, build: Callable[[], nn.Module]) -> nn.Module:
    with torch.device(device):
        return build()


def builders(shape: str, hf: bool) -> Dict[str, Callable[[], nn.Module]]:
    out: Dict[str, Callable[[], nn.Module]] = {"reference Llama": lambda: Llama(llama_config(shape))}
    if hf:
        try:
            import transformers
        except ImportError:
            return out
        c = llama_config(shape)
        cfg = transformers.LlamaConfig(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
            max_position_embeddings=c.max_position_embeddings)
        if shape != "1b":
            return out  # one HF shape keeps the run short
        out["HF LlamaForCausalLM"] = lambda: transformers.LlamaForCausalLM(cfg)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1b,7b")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hf", action="store_true", help="also transformers' LlamaForCausalLM")
    ap.add_argument("--plot", default=None, help="write a bar chart (PNG) here")
    args = ap.parse_args(argv)
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print("| model | shape | dtype | GiB | eager s | meta+init s | lazy build s | lazy "
          "materialize s | lazy total / eager | materialize / floor | peak / bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        rate = normal_rate(dtype)
        for shape in args.shapes.split(","):
            for model, build in builders(shape, args.hf).items():
                saved = torch.get_default_dtype()
                torch.set_default_dtype(dtype)
                try:
                    r = run(build, args.repeat)
                finally:
                    torch.set_default_dtype(saved)
                nbytes = r["bytes"][0]
                floor = nbytes / rate
                row = (model, shape, dtype_name, nbytes / GiB, r["eager"][0],
                       r["meta+to_empty+init"][0], r["lazy construct"][0],
                       r["lazy materialize"][0], r["lazy total"][0] / r["eager"][0],
                       r["lazy materialize"][0] / floor, r["lazy materialize"][1] * GiB / nbytes)
                rows.append(row)
                print("| {} | {} | {} | {:.2f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.2f} | "
                      "{:.2f} | {:.3f} |".format(*row), flush=True)
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        short = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}
        labels = [f"{m.split()[0]} {s} {short.get(d, d)}" for m, s, d, *_ in rows]
        x = range(len(rows))
        fig, ax = plt.subplots(figsize=(max(6, len(rows) * 1.2), 4))
        w = 0.27
        ax.bar([i - w for i in x], [r[4] for r in rows], w, label="eager CUDA")
        ax.bar(list(x), [r[5] for r in rows], w, label="meta + to_empty + init")
        ax.bar([i + w for i in x], [r[6] + r[7] for r in rows], w, label="lazy + materialize")
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, rotation=20, fontsize=8)
        ax.set_ylabel("seconds")
        ax.set_title(f"Building on {props.name}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
