#!/usr/bin/env python3
"""Misuse probe: how lazyinit behaves where users go off the happy path.

Each case is a small program run twice in fresh interpreters, eagerly and
with lazy construction, recording what a user observes at each step: values
(bitwise), generator states, and exceptions (their type and the step that
raised). The lazy run is then classified:

- correct: every observation equals eager's;
- clear: lazy raised where eager did not, with a lazyinit message that says
  what to do (a stated limit);
- unclear: lazy raised an error eager does not, without such a message, or
  at another step;
- wrong: it ran, but an observation differs (a silent wrong value);
- hang / crash: no answer within the time limit / the interpreter died.

    .venv/bin/python benchmarks/misuse_probe.py [--only NAME] [--show]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import textwrap
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
PY = os.path.join(HERE, "..", "python")

# The harness each case runs in. `LAZY` selects the run; `mk(...)` builds
# under LazyInitContext when lazy; `obs(name, value)` records an observation
# (tensors are materialized first); `step(name, fn)` records fn's result or
# the exception type it raised.
PRELUDE = textwrap.dedent("""
    import contextlib, copy, io, json, os, pickle, sys, threading
    import numpy as np
    import torch, torch.nn as nn, torch.nn.functional as F
    LAZY = sys.argv[1] == "lazy"
    if LAZY:
        import lazyinit
    OBS = []
    def ctx():
        return lazyinit.LazyInitContext() if LAZY else contextlib.nullcontext()
    DEV = {"device": "lazy"} if LAZY else {}
    def real(x):
        if isinstance(x, torch.Tensor):
            if LAZY and lazyinit.is_lazy(x):
                lazyinit.materialize(x, "cpu")
            return x.detach().cpu()
        if isinstance(x, nn.Module):
            if LAZY:
                lazyinit.materialize(x, "cpu")
            return {k: v.detach().cpu() for k, v in x.state_dict().items()}
        return x
    def enc(x):
        x = real(x)
        if isinstance(x, torch.Tensor):
            return [str(x.dtype), list(x.shape), x.double().flatten().tolist() if x.is_floating_point()
                    else x.flatten().tolist()]
        if isinstance(x, dict):
            return {k: enc(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [enc(v) for v in x]
        return x
    def obs(name, value):
        OBS.append([name, "value", enc(value)])
    def rng(name):
        OBS.append([name, "rng", torch.get_rng_state().tolist(), torch.initial_seed()])
    def step(name, fn):
        try:
            r = fn()
        except Exception as e:
            msg = str(e)
            OBS.append([name, "raised", type(e).__name__, "lazyinit" in msg and LAZY])
            return None
        OBS.append([name, "ok"])
        return r
    def done():
        print("OBS=" + json.dumps(OBS))
""")

CASES: Dict[str, str] = {
    "discard then draw": """
        torch.manual_seed(0)
        with ctx(): m = nn.Linear(4, 4)
        if LAZY: lazyinit.discard(m)
        obs("randn", torch.randn(2)); rng("end")
    """,
    "del pending model then draw": """
        torch.manual_seed(1)
        with ctx(): m = nn.Sequential(*[nn.Linear(256, 256) for _ in range(8)])
        del m
        obs("randn", torch.randn(3)); rng("end")
    """,
    "get_rng_state while pending": """
        torch.manual_seed(2)
        with ctx(): m = nn.Linear(30, 30)
        rng("mid"); obs("m", m); rng("end")
    """,
    "default_generator.get_state while pending": """
        torch.manual_seed(2)
        with ctx(): m = nn.Linear(30, 30)
        obs("state", torch.default_generator.get_state()); obs("seed", torch.default_generator.initial_seed())
    """,
    "explicit generator get_state while pending": """
        g = torch.Generator().manual_seed(5)
        t = torch.empty(100, **DEV).normal_(generator=g)
        obs("state", g.get_state()); obs("t", t)
    """,
    "fork_rng inside construction": """
        torch.manual_seed(3)
        with ctx():
            a = torch.empty(20).normal_()
            with torch.random.fork_rng():
                torch.manual_seed(99); b = torch.randn(5)
            c = torch.empty(20).normal_()
        obs("a", a); obs("b", b); obs("c", c); rng("end")
    """,
    "real in-place draw mid-construction": """
        torch.manual_seed(4)
        with ctx():
            w = torch.empty(50).normal_()
            r = torch.zeros(20, device="cpu").uniform_()
            v = torch.empty(30).normal_()
        obs("w", w); obs("r", r); obs("v", v); rng("end")
    """,
    "reseed mid-construction": """
        torch.manual_seed(5)
        with ctx():
            a = torch.empty(40).uniform_()
            torch.manual_seed(5)
            b = torch.empty(40).uniform_()
        obs("b", b); obs("a", a); rng("end")
    """,
    "numpy array reused for tensors": """
        table = np.zeros(3, np.float32); rows = []
        for i in range(4):
            table[:] = i; rows.append(torch.tensor(table, **DEV))
        for i, r in enumerate(rows): obs(f"row{i}", r)
    """,
    "from_numpy source written later": """
        arr = np.ones(4, np.float32); src = torch.from_numpy(arr)
        t = torch.empty(4, **DEV); t.copy_(src); arr[:] = 7
        obs("t", t)
    """,
    ".data write to a copied source": """
        src = torch.ones(4); t = torch.empty(4, **DEV); t.copy_(src); src.data.add_(3)
        obs("t", t)
    """,
    "inference tensor source": """
        with torch.inference_mode(): src = torch.ones(4)
        t = torch.empty(4, **DEV); t.copy_(src)
        with torch.inference_mode(): src.add_(2)
        obs("t", t)
    """,
    "load_state_dict from reused buffer": """
        buf = np.zeros((3, 2), np.float32); mods = []
        for i in range(3):
            buf[:] = i + 1
            m = nn.Linear(2, 3, bias=False, **DEV)
            m.load_state_dict({"weight": torch.from_numpy(buf)}); mods.append(m)
        for i, m in enumerate(mods): obs(f"m{i}", m)
    """,
    "reader then later write": """
        torch.manual_seed(0)
        a = torch.randn(2, 3, 3, **DEV); b = a @ a; c = b.clone(); b[0] = 10.0
        obs("b", b); obs("c", c)
    """,
    "view write after clone": """
        x = torch.arange(12.0, **DEV).reshape(3, 4); y = x.t().clone(); x[:, 1] = -1
        obs("x", x); obs("y", y)
    """,
    "normal_ on integer tensor": """
        torch.manual_seed(0)
        with ctx():
            counts = torch.zeros(8, dtype=torch.long)
            step("normal_", lambda: counts.normal_())
            m = nn.Linear(4, 4)
        obs("m", m)
    """,
    "uniform_ with bad bounds": """
        t = torch.empty(4, **DEV)
        step("uniform_", lambda: t.uniform_(2.0, 1.0)); obs("t_shape", list(t.shape))
    """,
    "normal_ negative std": """
        t = torch.empty(4, **DEV); step("normal_", lambda: t.normal_(0.0, -1.0))
    """,
    "shape mismatch add": """
        a = torch.ones(3, **DEV); b = torch.ones(4, **DEV); step("add", lambda: a + b)
    """,
    "index out of range": """
        t = torch.arange(3.0, **DEV); idx = torch.tensor([0, 5], **DEV)
        r = step("index_select", lambda: torch.index_select(t, 0, idx))
        if r is not None: step("use", lambda: real(r))
    """,
    "singular inverse": """
        step("inv", lambda: torch.linalg.inv(torch.zeros(3, 3, **DEV)))
    """,
    "cholesky not PD": """
        step("cholesky", lambda: torch.linalg.cholesky(-torch.eye(3, **DEV)))
    """,
    "sort out=": """
        torch.manual_seed(0); x = torch.randn(4, 5, **DEV)
        v = torch.empty(4, 5, **DEV); i = torch.empty(4, 5, dtype=torch.long, **DEV)
        torch.sort(x, dim=1, out=(v, i)); obs("v", v); obs("i", i)
    """,
    "max dim out=": """
        torch.manual_seed(0); x = torch.randn(4, 5, **DEV)
        v = torch.empty(4, **DEV); i = torch.empty(4, dtype=torch.long, **DEV)
        torch.max(x, 1, out=(v, i)); obs("v", v); obs("i", i)
    """,
    "topk / cummax out=": """
        torch.manual_seed(0); x = torch.randn(4, 5, **DEV)
        o = (torch.empty(4, 2, **DEV), torch.empty(4, 2, dtype=torch.long, **DEV))
        torch.topk(x, 2, out=o); obs("topk", list(o))
        c = (torch.empty(4, 5, **DEV), torch.empty(4, 5, dtype=torch.long, **DEV))
        torch.cummax(x, 0, out=c); obs("cummax", list(c))
    """,
    "batchnorm train forward at build": """
        torch.manual_seed(0)
        with ctx():
            bn = nn.BatchNorm1d(3); x = torch.randn(4, 3, 5); y = bn(x)
        obs("rm", bn.running_mean); obs("rv", bn.running_var); obs("y", y)
    """,
    "F.batch_norm with buffers": """
        torch.manual_seed(0); x = torch.randn(4, 3, **DEV)
        rm = torch.zeros(3, **DEV); rv = torch.ones(3, **DEV)
        y = F.batch_norm(x, rm, rv, training=True, momentum=0.3)
        obs("rm", rm); obs("rv", rv); obs("y", y)
    """,
    "instance norm running stats": """
        torch.manual_seed(0)
        with ctx():
            n = nn.InstanceNorm1d(3, track_running_stats=True); x = torch.randn(2, 3, 6); n(x)
        obs("rm", n.running_mean); obs("rv", n.running_var)
    """,
    "weight_norm weight attribute": """
        from torch.nn.utils import weight_norm
        torch.manual_seed(1)
        with ctx(): m = weight_norm(nn.Linear(5, 3))
        if LAZY: lazyinit.materialize(m)
        obs("weight", m.weight); obs("out", m(torch.ones(2, 5)))
    """,
    "positional table attribute": """
        class P(nn.Module):
            def __init__(self):
                super().__init__(); self.table = torch.randn(6, 4); self.lin = nn.Linear(4, 4)
            def forward(self, x): return self.lin(x) + self.table[: x.shape[0]]
        torch.manual_seed(2)
        with ctx(): m = P()
        if LAZY: lazyinit.materialize(m)
        obs("out", m(torch.ones(3, 4)))
    """,
    "to_empty then reset_parameters": """
        torch.manual_seed(0)
        with ctx(): m = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
        ids = [id(p) for p in m.parameters()]
        m.to_empty(device="cpu")
        for l in m: l.reset_parameters()
        obs("same_objects", ids == [id(p) for p in m.parameters()]); obs("m", m); rng("end")
    """,
    "stray __exit__": """
        c = lazyinit.LazyInitContext() if LAZY else contextlib.nullcontext()
        step("exit", lambda: c.__exit__(None, None, None))
        with ctx(): t = torch.empty(2)
        obs("lazy_after", LAZY and lazyinit.is_lazy(t) or not LAZY)
    """,
    "exit from another thread": """
        c = lazyinit.LazyInitContext() if LAZY else contextlib.nullcontext()
        res = []
        with c:
            th = threading.Thread(target=lambda: res.append(step("exit", lambda: c.__exit__(None, None, None))))
            th.start(); th.join()
            t = torch.empty(2)
        obs("lazy_inside", (LAZY and lazyinit.is_lazy(t)) or not LAZY)
    """,
    "pickle lazy tensor": """
        t = torch.ones(3, **DEV); step("pickle", lambda: pickle.dumps(t))
    """,
    "torch.save lazy tensor": """
        t = torch.ones(3, **DEV); step("save", lambda: torch.save(t, io.BytesIO()))
    """,
    "materialize to cuda on cpu torch": """
        m = nn.Linear(2, 2, **DEV)
        step("to", lambda: m.to("cuda"))
    """,
    "is_lazy after discard": """
        m = nn.Linear(3, 3, **DEV)
        if LAZY:
            lazyinit.discard(m); obs("is_lazy", lazyinit.is_lazy(m))
        else:
            obs("is_lazy", False)
    """,
    "deepcopy pending model": """
        torch.manual_seed(3)
        with ctx(): m = nn.Linear(6, 6)
        c = copy.deepcopy(m); obs("c", c); obs("m", m)
    """,
    "tied weights materialize": """
        torch.manual_seed(4)
        with ctx():
            m = nn.Module(); m.emb = nn.Embedding(10, 4); m.head = nn.Linear(4, 10, bias=False)
            m.head.weight = m.emb.weight
        obs("tied", m.head.weight is m.emb.weight); obs("m", m); obs("tied_after", m.head.weight is m.emb.weight)
    """,
    "optimizer made before materialize": """
        torch.manual_seed(5)
        with ctx(): m = nn.Linear(4, 2)
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        if LAZY: lazyinit.materialize(m)
        m(torch.ones(3, 4)).sum().backward(); opt.step(); obs("m", m)
    """,
    "trunc_normal narrow bounds": """
        torch.manual_seed(6)
        with ctx():
            w = torch.empty(200, 5); nn.init.trunc_normal_(w)
            v = torch.empty(30).normal_()
        obs("w", w); obs("v", v); rng("end")
    """,
    "set_default_dtype after build": """
        torch.manual_seed(7)
        with ctx(): a = torch.randn(4) ; b = torch.arange(3) * 0.5
        torch.set_default_dtype(torch.float64)
        obs("a", a); obs("b", b); torch.set_default_dtype(torch.float32)
    """,
}


def run_one(code: str, mode: str, timeout: float) -> Tuple[str, object]:
    env = dict(os.environ, PYTHONPATH=PY, OMP_NUM_THREADS="1")
    script = PRELUDE + textwrap.dedent(code) + "\ndone()\n"
    try:
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True,
                             text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "hang", None
    if out.returncode < 0:
        return "crash", out.stderr[-500:]
    for line in out.stdout.splitlines():
        if line.startswith("OBS="):
            return "ran", json.loads(line[4:])
    return "died", out.stderr[-800:]


def classify(eager: Tuple[str, object], lazy: Tuple[str, object]) -> Tuple[str, str]:
    if lazy[0] in ("hang", "crash"):
        return lazy[0], str(lazy[1])[-200:]
    if eager[0] != "ran":
        return "probe-error", f"eager run: {eager[0]} {str(eager[1])[-300:]}"
    if lazy[0] != "ran":
        return "unclear", f"lazy run died: {str(lazy[1])[-300:]}"
    e, l = eager[1], lazy[1]
    for i in range(max(len(e), len(l))):
        if i >= len(e) or i >= len(l):
            return "wrong", f"observation count {len(l)} vs eager {len(e)}"
        oe, ol = e[i], l[i]
        if oe[1] == ol[1] == "raised":
            if oe[2] != ol[2]:
                return "unclear", f"{ol[0]}: {ol[2]} where eager raises {oe[2]}"
            continue  # same error at the same step
        if oe == ol:
            continue
        if ol[1] == "raised":
            return ("clear" if ol[3] else "unclear"), f"{ol[0]}: lazy raised {ol[2]}"
        if oe[1] == "raised":
            # A value-dependent error lazy can only see once values exist:
            # clear if a later step raises the same type, naming the call.
            later = [o for o in l[i + 1:] if o[1] == "raised" and o[2] == oe[2] and o[3]]
            if later:
                return "clear", f"{oe[0]}: raised at {later[0][0]} (materialization)"
            return "wrong", f"{oe[0]}: eager raises {oe[2]}, lazy did not"
        return "wrong", f"{oe[0]}: {ol[1]} differs"
    return "correct", ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="run the cases whose name contains this")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--show", action="store_true", help="print every case's class")
    args = p.parse_args()
    import torch
    counts: Dict[str, int] = collections.Counter()
    rows: List[Tuple[str, str, str]] = []
    for name, code in CASES.items():
        if args.only and args.only not in name:
            continue
        kind, why = classify(run_one(code, "eager", args.timeout),
                             run_one(code, "lazy", args.timeout))
        counts[kind] += 1
        rows.append((name, kind, why))
        if args.show or kind not in ("correct", "clear"):
            print(f"{kind:8s} {name}" + (f"  -- {why}" if why else ""), flush=True)
    print(f"torch {torch.__version__}: {len(rows)} cases: " +
          ", ".join(f"{k} {counts[k]}" for k in
                    ("correct", "clear", "unclear", "wrong", "hang", "crash", "probe-error")
                    if counts[k]))


if __name__ == "__main__":
    main()
