"""Features torch 1.13 does not have, tested on the torch-2.x leg of
``make test``: ``with torch.device("lazy")``, ``torch.accelerator``,
``torch.compile``, DTensor and FSDP2 after a lazy build, and
``Module._apply`` through ``torch.utils.swap_tensors``.

Process-wide effects (which torch modules were imported inside a context)
are checked in fresh interpreters.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

import lazyinit
from conftest import assert_modules_equal

needs_torch2 = pytest.mark.skipif(not hasattr(torch, "compile"), reason="a torch 2.x feature")

_PY = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "python"))


def run_script(body: str, timeout: int = 600) -> str:
    """Runs ``body`` in a fresh interpreter (lazyinit importable, one CPU
    thread, libuv off for torch.distributed) and returns its stdout."""
    env = dict(os.environ, PYTHONPATH=_PY, OMP_NUM_THREADS="1", USE_LIBUV="0")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(body)], capture_output=True,
                         text=True, env=env, timeout=timeout)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr[-6000:]}"
    return out.stdout


# Every nn.init function, each on a parameter of its own (trunc_normal_ with
# bounds no sample can cross, and with bounds that reject: torch 2.14's
# sampler reads values for those).
_EVERY_INIT = """
import math, torch, torch.nn as nn

class EveryInit(nn.Module):
    def __init__(self):
        super().__init__()
        def p(*shape):
            return nn.Parameter(torch.empty(*shape))
        self.uniform = p(33, 17); nn.init.uniform_(self.uniform, -0.1, 0.3)
        self.normal = p(40, 9); nn.init.normal_(self.normal, 0.5, 0.02)
        self.trunc_wide = p(65, 31); nn.init.trunc_normal_(self.trunc_wide, std=0.02)
        self.trunc_narrow = p(21, 13); nn.init.trunc_normal_(self.trunc_narrow)
        self.trunc_shifted = p(50); nn.init.trunc_normal_(self.trunc_shifted, 1.0, 0.5, 0.2, 2.5)
        self.constant = p(5, 4); nn.init.constant_(self.constant, 0.25)
        self.ones = p(7); nn.init.ones_(self.ones)
        self.zeros = p(3, 3); nn.init.zeros_(self.zeros)
        self.eye = p(6, 9); nn.init.eye_(self.eye)
        self.dirac = p(4, 2, 3, 3); nn.init.dirac_(self.dirac, groups=2)
        self.xavier_u = p(30, 20); nn.init.xavier_uniform_(self.xavier_u, gain=2.0)
        self.xavier_n = p(25, 11); nn.init.xavier_normal_(self.xavier_n)
        self.kaiming_u = p(64, 48); nn.init.kaiming_uniform_(self.kaiming_u, a=math.sqrt(5))
        self.kaiming_n = p(8, 4, 3, 3); nn.init.kaiming_normal_(self.kaiming_n, mode="fan_out")
        self.orthogonal = p(12, 20); nn.init.orthogonal_(self.orthogonal)
        self.sparse = p(20, 10); nn.init.sparse_(self.sparse, sparsity=0.3)
        self.mlp = nn.Sequential(nn.Linear(20, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 4))

    def forward(self, x):
        return self.mlp(x @ self.orthogonal) + self.ones[:4]
"""


@needs_torch2
def test_every_nn_init_lazily_then_compile_dtensor_and_fsdp2():
    """The first import of torch._dynamo happens while a context is active
    (a Python Meta kernel imports it); afterwards torch.compile, DTensor and
    FSDP2 must work, and every tensor must equal eager construction."""
    out = run_script(_EVERY_INIT + """
import sys, lazyinit
assert "torch._dynamo" not in sys.modules
torch.manual_seed(0)
with lazyinit.LazyInitContext():
    lazy = EveryInit()
torch.manual_seed(0)
eager = EveryInit()
eager_state = torch.get_rng_state()
assert lazyinit.is_lazy(lazy)
early = lazyinit.stats(lazy)
lazyinit.materialize(lazy)
for (name, e), (_, l) in zip(eager.state_dict().items(), lazy.state_dict().items()):
    assert torch.equal(e, l), name
assert torch.equal(torch.get_rng_state(), eager_state)

import torch._dynamo  # raised "Duplicate dispatch rule" when imported first in a context
x = torch.randn(3, 12)
compiled = torch.compile(lazy, backend="aot_eager")
assert torch.equal(compiled(x), eager(x))

import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from torch.distributed.fsdp import fully_shard
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
mesh = init_device_mesh("cpu", (1,))
d = distribute_tensor(lazy.uniform.detach(), mesh, [Shard(0)])
assert torch.equal(d.to_local(), eager.uniform)
fully_shard(lazy.mlp, mesh=mesh)
fully_shard(lazy, mesh=mesh)
loss = lazy(x).sum()
loss.backward()
assert torch.equal(loss.detach(), eager(x).sum().detach())
dist.destroy_process_group()
print("early", early.parameters_early)
""")
    # Only the trunc_normal_ calls whose bounds can reject read values early
    # (where this torch's sampler reads values at all).
    assert int(out.split()[-1]) <= 2


@needs_torch2
def test_torch_accelerator_and_device_modules_are_untouched():
    """Importing lazyinit and using it leaves torch.accelerator, the
    default device module and FSDP2's default mesh as they were."""
    run_script("""
import os, torch
def facts():
    acc = getattr(torch, "accelerator", None)
    out = {"module": torch.get_device_module().__name__ if hasattr(torch, "get_device_module") else None}
    if acc is not None:
        out.update(current=acc.current_accelerator(), available=acc.is_available(),
                   count=acc.device_count())
    return out
before = facts()
import lazyinit
with lazyinit.LazyInitContext():
    m = torch.nn.Linear(4, 4)
lazyinit.materialize(m)
after = facts()
assert before == after, (before, after)
from torch.utils.data import DataLoader, TensorDataset
x = torch.arange(12.0).reshape(6, 2)
assert torch.equal(torch.cat([b[0] for b in DataLoader(TensorDataset(x), batch_size=3,
                                                      pin_memory=torch.cuda.is_available())]), x)
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
plain = torch.nn.Linear(4, 4)
fully_shard(plain)  # the default mesh follows torch.accelerator
assert plain.weight.device_mesh.device_type == ("cuda" if torch.cuda.is_available() else "cpu")
dist.destroy_process_group()
""")


@needs_torch2
def test_torch_device_context_builds_lazily():
    def build():
        return nn.Sequential(nn.Linear(7, 13), nn.ReLU(), nn.Linear(13, 3), nn.LayerNorm(3))

    torch.manual_seed(4)
    eager = build()
    torch.manual_seed(4)
    with torch.device("lazy"):
        lazy = build()
    assert all(lazyinit.is_lazy(p) for p in lazy.parameters())
    assert lazyinit.is_lazy(torch.empty(2, device="lazy"))
    lazyinit.materialize(lazy, "cpu")
    assert_modules_equal(eager, lazy)


@needs_torch2
def test_device_module():
    assert torch.get_device_module("lazy") is torch.lazy
    assert torch.lazy.is_available() and torch.lazy.device_count() == 1
    assert torch.device("lazy").type == "lazy"


@pytest.mark.skipif(not hasattr(torch, "__future__") or
                    not hasattr(torch.__future__, "set_swap_module_params_on_conversion"),
                    reason="torch.utils.swap_tensors conversions are torch >= 2.3")
def test_module_to_with_swap_tensors_materializes_in_place():
    """With torch.__future__.set_swap_module_params_on_conversion(True),
    Module._apply swaps each parameter with its converted self: a lazy
    model's .to("cpu") must still keep Parameter objects and ties."""
    def build():
        m = nn.Module()
        m.emb = nn.Embedding(10, 6)
        m.head = nn.Linear(6, 10, bias=False)
        m.head.weight = m.emb.weight
        m.norm = nn.LayerNorm(6)
        return m

    torch.manual_seed(9)
    eager = build()
    torch.manual_seed(9)
    with lazyinit.LazyInitContext():
        lazy = build()
    params = [id(p) for p in lazy.parameters()]
    old = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        lazy.to("cpu")
    finally:
        torch.__future__.set_swap_module_params_on_conversion(old)
    assert [id(p) for p in lazy.parameters()] == params
    assert lazy.head.weight is lazy.emb.weight
    assert_modules_equal(eager, lazy)
