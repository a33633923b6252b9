#!/usr/bin/env python3
"""Construction cost of Llama shapes: eager CPU vs meta vs lazyinit.

Every measurement runs in a fresh child process, so "peak RSS" is that child's
ru_maxrss (nothing subtracted); the child's RSS right after its imports is
reported as "baseline" next to it.

    /usr/bin/python3 benchmarks/construct.py                       # 1b, 7b, 70b
    /usr/bin/python3 benchmarks/construct.py --shapes 1b --json out.json
    /usr/bin/python3 benchmarks/construct.py --eager-all            # eager 7b needs ~28 GB

Methods:
  eager              plain CPU construction (default: only for 1b, see --eager-all)
  meta               torch >= 2.0: ``with torch.device("meta")``; torch 1.13: a
                     TorchFunctionMode that passes device="meta" to factory calls
                     without a device (same model code, no data)
  lazy               construction under ``lazyinit.LazyInitContext()`` (recording only)
  lazy_materialize   lazy construction + ``lazyinit.materialize(model, "cpu")``
                     (opt-in via --methods; the time is both phases together)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, ".."))
MODELS_DIR = os.path.join(ROOT, "tests", "python")
PY_DIR = os.path.join(ROOT, "python")

DEFAULT_METHODS = ["eager", "meta", "lazy"]
ALL_METHODS = DEFAULT_METHODS + ["lazy_materialize"]


# --------------------------------------------------------------------------
# meta construction that works on torch 1.13 and 2.x

def meta_device_context():
    import torch
    major = int(torch.__version__.split(".")[0])
    if major >= 2:
        return torch.device("meta")
    return _MetaFactoryMode()


def _factory_functions():
    import torch
    try:  # torch 2.x keeps the authoritative list
        from torch.utils._device import _device_constructors
        return set(_device_constructors())
    except Exception:
        pass
    names = ["empty", "empty_strided", "empty_quantized", "ones", "arange", "bartlett_window",
             "blackman_window", "eye", "fft.fftfreq", "fft.rfftfreq", "full", "fill",
             "hamming_window", "hann_window", "kaiser_window", "linspace", "logspace",
             "nested.nested_tensor", "rand", "randn", "randint", "randperm", "range",
             "sparse_coo_tensor", "sparse_compressed_tensor", "sparse_csr_tensor",
             "sparse_csc_tensor", "sparse_bsr_tensor", "sparse_bsc_tensor", "tril_indices",
             "triu_indices", "vander", "zeros", "asarray", "tensor", "as_tensor",
             "scalar_tensor"]
    out = set()
    for n in names:
        obj = torch
        try:
            for part in n.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        out.add(obj)
    return out


def _MetaFactoryMode():
    from torch.overrides import TorchFunctionMode

    factories = _factory_functions()

    class MetaFactoryMode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in factories and kwargs.get("device") is None:
                kwargs = dict(kwargs, device="meta")
            return func(*args, **kwargs)

    return MetaFactoryMode()


# --------------------------------------------------------------------------
# child: one measurement

def _rss_now_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _maxrss_kib() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r


def child(shape: str, method: str) -> dict:
    sys.path.insert(0, MODELS_DIR)
    sys.path.insert(0, PY_DIR)
    import torch
    from models import Llama, llama_config
    lazyinit = None
    if method.startswith("lazy"):
        import lazyinit  # noqa: F811
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = llama_config(shape)
    baseline_kib = _rss_now_kib()
    baseline_peak_kib = _maxrss_kib()

    torch.manual_seed(0)
    t0 = time.perf_counter()
    if method == "eager":
        model = Llama(cfg)
    elif method == "meta":
        with meta_device_context():
            model = Llama(cfg)
    elif method in ("lazy", "lazy_materialize"):
        with lazyinit.LazyInitContext():
            model = Llama(cfg)
        if method == "lazy_materialize":
            t_rec = time.perf_counter() - t0
            lazyinit.materialize(model, "cpu")
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - t0

    params = sum(p.numel() for p in model.parameters())
    res = {
        "shape": shape, "method": method, "params": params, "seconds": seconds,
        "peak_rss_mib": _maxrss_kib() / 1024.0,
        "baseline_rss_mib": baseline_kib / 1024.0,
        "baseline_peak_rss_mib": baseline_peak_kib / 1024.0,
        "rss_after_mib": _rss_now_kib() / 1024.0,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    if lazyinit is not None:
        if method == "lazy_materialize":
            res["record_seconds"] = t_rec
        for k in ("live_graph_nodes",):
            try:
                res[k] = lazyinit.live_graph_nodes()
            except Exception as e:  # report, do not hide
                res[k] = f"error: {e}"
        try:
            s = lazyinit.stats(model)
            res["stats"] = {k: getattr(s, k) for k in (
                "parameters_lazy", "parameters_materialized", "parameters_early",
                "buffers_lazy", "buffers_materialized", "buffers_early",
                "elements_lazy", "elements_materialized", "elements_early")}
        except Exception as e:
            res["stats"] = f"error: {e}"
    return res


# --------------------------------------------------------------------------
# parent: orchestrate, print table

def run_one(shape, method, timeout):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PY_DIR, MODELS_DIR] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", shape, method]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"shape": shape, "method": method, "error": f"timeout after {timeout}s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
    return {"shape": shape, "method": method, "error": f"rc={p.returncode}: " + " | ".join(tail)}


def _fmt_params(n):
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def _fmt_ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b not in (None, 0) else ""


def table(results):
    lines = [
        "| shape | params | method | seconds | peak RSS MiB | baseline MiB | lazy/meta time | lazy/meta peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["shape"], r["method"]): r for r in results}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['shape']} | | {r['method']} | ERROR: {r['error']} | | | | |")
            continue
        rt = rr = ""
        meta = by.get((r["shape"], "meta"))
        if r["method"] == "lazy" and meta and "error" not in meta:
            rt = _fmt_ratio(r["seconds"], meta["seconds"])
            rr = _fmt_ratio(r["peak_rss_mib"], meta["peak_rss_mib"])
        lines.append(
            f"| {r['shape']} | {_fmt_params(r['params'])} | {r['method']} | {r['seconds']:.3f} "
            f"| {r['peak_rss_mib']:.0f} | {r['baseline_rss_mib']:.0f} | {rt} | {rr} |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        print(json.dumps(child(argv[1], argv[2])), flush=True)
        return 0

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1b,7b,70b", help="comma list of llama shapes")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help=f"comma list from {ALL_METHODS}")
    ap.add_argument("--eager-all", action="store_true",
                    help="run eager (and lazy_materialize) for shapes beyond 1b too "
                         "(7b needs ~28 GB, 70b ~280 GB)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell; the fastest is kept")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per child")
    ap.add_argument("--json", metavar="OUT", help="write all results as JSON")
    args = ap.parse_args(argv)

    methods = args.methods.split(",")
    for m in methods:
        if m not in ALL_METHODS:
            ap.error(f"unknown method {m!r}")
    results = []
    for shape in args.shapes.split(","):
        for method in methods:
            if method in ("eager", "lazy_materialize") and shape not in ("tiny", "1b") \
                    and not args.eager_all:
                print(f"# skipping {method} for {shape} (needs the full model in RAM; "
                      f"use --eager-all)", file=sys.stderr)
                continue
            runs = [run_one(shape, method, args.timeout) for _ in range(max(1, args.repeat))]
            ok = [r for r in runs if "error" not in r]
            best = min(ok, key=lambda r: r["seconds"]) if ok else runs[-1]
            if ok:
                best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in ok)
            best["repeat"] = len(runs)
            results.append(best)
            print(f"# {shape} {method}: " + (
                f"{best['seconds']:.3f} s, peak {best['peak_rss_mib']:.0f} MiB"
                if "error" not in best else best["error"]), file=sys.stderr, flush=True)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
