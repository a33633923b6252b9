#!/usr/bin/env python3
"""Pretrained weights, side by side: time, peak RSS and bytes read from the
disk to load a ~1B-shaped Llama checkpoint (generated locally by
``save_pretrained``) onto the CPU:

- eager ``from_pretrained``;
- accelerate's ``init_empty_weights`` + ``load_checkpoint_and_dispatch``;
- lazyinit whole: ``from_pretrained`` under ``LazyInitContext()``, then
  ``lazyinit.materialize(model, "cpu")``;
- lazyinit one rank of 8: the same lazy model, then
  ``materialize_module_shards(model, Shard(0, 7, 8))``.

Each runs in a fresh process; the checkpoint's pages are dropped from the
page cache first (``posix_fadvise``), so "read" is what came from the disk
(``/proc/self/io``). "time" is the load (and materialization); then every
tensor of the result is read once (``sum``), since eager and accelerate may
leave tensors backed by the file's mapping, read on first touch; "+ reading"
is the time until then, the fair comparison. "peak RSS" and "read" include
that pass; peak RSS is above the RSS after imports.

    .venv/bin/python benchmarks/pretrained.py [--shape 1b] [--dtype bfloat16] [--dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, "..", "python"))

SHAPES: Dict[str, Dict[str, int]] = {
    "small": dict(vocab_size=8192, hidden_size=1024, intermediate_size=2816,
                  num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8),
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4),
}
MODES = ("eager", "accelerate", "lazy_whole", "lazy_rank7of8")


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _read_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))


def _drop_cached(folder: str) -> None:
    for name in os.listdir(folder):
        fd = os.open(os.path.join(folder, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def generate(folder: str, shape: str, dtype_name: str) -> None:
    import torch
    import transformers
    cfg = transformers.LlamaConfig(**SHAPES[shape], tie_word_embeddings=False,
                                   dtype=dtype_name)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    model.to_empty(device="cpu").to(getattr(torch, dtype_name))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=gen)
    model.save_pretrained(folder)


def run_mode(mode: str, folder: str, dtype_name: str) -> Dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import torch
    import transformers
    import transformers.models.llama.modeling_llama  # noqa: F401 - imported before the count
    import lazyinit
    dtype = getattr(torch, dtype_name)
    cls = transformers.LlamaForCausalLM
    if mode == "accelerate":
        import accelerate
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    _drop_cached(folder)
    base, read0, start = _kib("VmRSS"), _read_bytes(), time.perf_counter()
    out: Dict[str, Any] = {}
    if mode == "eager":
        model = cls.from_pretrained(folder, dtype=dtype)
    elif mode == "accelerate":
        config = transformers.AutoConfig.from_pretrained(folder)
        with accelerate.init_empty_weights():
            model = cls._from_config(config, dtype=dtype)
        model = accelerate.load_checkpoint_and_dispatch(model, folder, device_map={"": "cpu"},
                                                        dtype=dtype)
    else:
        with lazyinit.LazyInitContext():
            model = cls.from_pretrained(folder, dtype=dtype)
        out["lazy_load_s"] = time.perf_counter() - start
        out["lazy_load_read"] = _read_bytes() - read0
        if mode == "lazy_whole":
            lazyinit.materialize(model, "cpu")
        else:
            pieces = lazyinit.materialize_module_shards(  # noqa: F841 - read below
                model, lambda n, t: lazyinit.Shard(0, 7, 8))
            out["piece_bytes"] = sum(p.numel() * p.element_size() for p in pieces.values())
    out["seconds"] = time.perf_counter() - start
    # Every byte of the result read once: tensors still backed by the
    # checkpoint's mapping (eager's, accelerate's) come into memory here.
    tensors = pieces.values() if mode == "lazy_rank7of8" else model.state_dict().values()
    with torch.no_grad():
        for t in tensors:
            t.float().sum()
    out["seconds_read"] = time.perf_counter() - start
    out.update(read=_read_bytes() - read0, peak=(_kib("VmHWM") - base) * 1024)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--dir", help="checkpoint folder (generated there if empty)")
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.dir, args.dtype)))
        return
    folder = args.dir or tempfile.mkdtemp(prefix="lazyinit-pretrained-")
    os.makedirs(folder, exist_ok=True)
    if not any(n.endswith(".safetensors") for n in os.listdir(folder)):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {_HERE!r}); "
                        f"import pretrained; pretrained.generate({folder!r}, {args.shape!r}, "
                        f"{args.dtype!r})"], check=True)
        print(f"generated {folder} in {time.perf_counter() - start:.0f} s")
    size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
    print(f"checkpoint: Llama {args.shape} ({SHAPES[args.shape]}), {args.dtype}, "
          f"{size / 2**20:.0f} MiB")
    print(f"| {'method':<46} | {'time':>7} | {'+ reading':>9} | {'peak RSS':>10} | {'read':>10} |")
    print(f"|{'-' * 48}|{'-' * 9}:|{'-' * 11}:|{'-' * 12}:|{'-' * 12}:|")
    names = {"eager": "eager `from_pretrained`",
             "accelerate": "accelerate `init_empty_weights` + dispatch",
             "lazy_whole": "lazyinit whole (lazy `from_pretrained` + materialize)",
             "lazy_rank7of8": "lazyinit rank 7 of 8 (`materialize_module_shards`)"}
    for mode in MODES:
        run = subprocess.run([sys.executable, __file__, "--mode", mode, "--dir", folder,
                              "--dtype", args.dtype], capture_output=True, text=True)
        if run.returncode != 0:
            print(f"| {names[mode]:<46} | failed: {run.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"| {names[mode]:<46} | {r['seconds']:6.2f}s | {r['seconds_read']:8.2f}s | "
              f"{r['peak'] / 2**20:6.0f} MiB | {r['read'] / 2**20:6.0f} MiB |")
        if "lazy_load_s" in r and mode == "lazy_whole":
            print(f"| {'  of which lazy `from_pretrained`':<46} | {r['lazy_load_s']:6.2f}s | "
                  f"{'':>9} | {'':>10} | {r['lazy_load_read'] / 2**20:6.1f} MiB |")
        if "piece_bytes" in r:
            print(f"| {'  (pieces: ' + format(r['piece_bytes'] / 2**20, '.0f') + ' MiB)':<46} "
                  f"| {'':>7} | {'':>9} | {'':>10} | {'':>10} |")


if __name__ == "__main__":
    main()
