"""Models, training and comparisons shared by the distributed tests (run in
the ranks of ``dist_harness.run_world``)."""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import lazyinit


def has_dtensor_engines() -> bool:
    """FSDP2 and DTensor as public APIs (torch >= 2.6)."""
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
        from torch.distributed.tensor import distribute_tensor  # noqa: F401
        from torch.distributed.tensor.parallel import parallelize_module  # noqa: F401
    except Exception:  # noqa: BLE001 - older torch (1.13's fsdp does not even import on 3.11)
        return False
    return True


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def hf_llama_builder(tied: bool, dtype: torch.dtype = torch.float32,
                     **overrides) -> Callable[[], nn.Module]:
    """A small Hugging Face LlamaForCausalLM (odd vocabulary and MLP sizes,
    grouped-query attention unless overridden)."""
    import transformers
    kw = dict(vocab_size=131, hidden_size=64, intermediate_size=100, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              tie_word_embeddings=tied)
    kw.update(overrides)
    cfg = transformers.LlamaConfig(**kw)

    def build() -> nn.Module:
        with default_dtype(dtype):
            return transformers.LlamaForCausalLM(cfg)
    return build


def build_pair(build: Callable[[], nn.Module], seed: int = 0) -> Tuple[nn.Module, nn.Module,
                                                                        torch.Tensor]:
    """(eager model, lazy model, CPU generator state eager construction left)."""
    torch.manual_seed(seed)
    eager = build()
    eager_rng = torch._C.default_generator.get_state()
    torch.manual_seed(seed)
    with lazyinit.LazyInitContext():
        lazy = build()
    return eager, lazy, eager_rng


def named_slots(module: nn.Module) -> Dict[str, torch.Tensor]:
    """Every parameter and buffer by name, tied ones under each name."""
    out: Dict[str, torch.Tensor] = {}
    for qual, mod in module.named_modules(remove_duplicate=False):
        prefix = qual + "." if qual else ""
        for kind in ("_parameters", "_buffers"):
            for name, t in getattr(mod, kind).items():
                if t is not None:
                    out[prefix + name] = t
    return out


def is_dtensor(t: torch.Tensor) -> bool:
    return hasattr(t, "device_mesh") and hasattr(t, "_local_tensor")


def assert_equal_to_oracle(lazy: nn.Module, eager_full: Dict[str, torch.Tensor]) -> int:
    """Every tensor of the prepared lazy model: a DTensor's local piece is
    ``distribute_tensor(eager, mesh, placements, src_data_rank=None)`` 's,
    other tensors equal eager's whole. Returns the number of DTensors."""
    from torch.distributed.tensor import distribute_tensor
    n = 0
    lazy_slots = named_slots(lazy)
    assert set(lazy_slots) == set(eager_full), set(lazy_slots) ^ set(eager_full)
    for name, t in lazy_slots.items():
        e = eager_full[name].detach()
        assert not lazyinit.is_lazy(t.detach() if not is_dtensor(t) else t._local_tensor), name
        if is_dtensor(t):
            n += 1
            want = distribute_tensor(e, t.device_mesh, t.placements,
                                     src_data_rank=None).to_local()
            got = t._local_tensor
        else:
            want, got = e, t.detach()
        assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
        assert got.shape == want.shape, (name, tuple(got.shape), tuple(want.shape),
                                         getattr(t, "placements", None))
        assert torch.equal(got, want), (name, getattr(t, "placements", None))
    return n


def assert_same_local_pieces(lazy: nn.Module, eager_engine: nn.Module) -> None:
    """The lazy-prepared model holds exactly what the eager-built model
    prepared with the same engine holds, piece by piece."""
    l_slots, e_slots = named_slots(lazy), named_slots(eager_engine)
    assert set(l_slots) == set(e_slots)
    for name, t in l_slots.items():
        e = e_slots[name]
        assert is_dtensor(t) == is_dtensor(e), name
        if is_dtensor(t):
            assert tuple(t.placements) == tuple(e.placements), (name, t.placements, e.placements)
            a, b = t._local_tensor, e._local_tensor
        else:
            a, b = t.detach(), e.detach()
        assert a.shape == b.shape and torch.equal(a, b), (name, getattr(t, "placements", None))


def ties(module: nn.Module) -> List[Tuple[str, ...]]:
    groups: Dict[int, List[str]] = {}
    for n, t in named_slots(module).items():
        groups.setdefault(id(t), []).append(n)
    return sorted(tuple(v) for v in groups.values() if len(v) > 1)


def lm_batch(vocab: int, batch: int = 2, seq: int = 12, seed: int = 1234) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=g)


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, labels=ids)
    return out.loss


def train(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor], steps: int = 3,
          lr: float = 1e-2) -> List[torch.Tensor]:
    """``steps`` AdamW steps on a fixed batch (``loss_fn(model)``); the losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach().float().clone())
    return losses


def gathered(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every parameter and buffer, whole (a DTensor's ``full_tensor()``: a
    collective every rank calls in the same order)."""
    out = {}
    for name, t in named_slots(model).items():
        out[name] = t.full_tensor().detach() if is_dtensor(t) else t.detach().clone()
    return out


def assert_training_equal(eager: nn.Module, lazy: nn.Module,
                          loss_fn: Callable[[nn.Module], torch.Tensor], steps: int = 3) -> None:
    """``steps`` AdamW steps of each: equal losses, then equal gathered
    parameters and buffers."""
    le = train(eager, loss_fn, steps)
    ll = train(lazy, loss_fn, steps)
    for i, (a, b) in enumerate(zip(le, ll)):
        assert torch.equal(a, b), f"loss of step {i}: eager {a.item()} lazy {b.item()}"
    ge, gl = gathered(eager), gathered(lazy)
    assert set(ge) == set(gl)
    for name in ge:
        assert torch.equal(ge[name], gl[name]), f"{name} differs after {steps} steps"


class SPBlock(nn.Module):
    """A pre-norm MLP block for sequence parallelism: LayerNorm
    (``SequenceParallel``), up (``ColwiseParallel``), down
    (``RowwiseParallel``) and a residual. The hidden size divides by 4:
    torch's own sharding propagation fails on uneven column shards in the
    forward pass (eager models too)."""

    def __init__(self, dim: int = 24, hidden: int = 72) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        nn.init.normal_(self.up.weight, std=0.02)
        nn.init.uniform_(self.down.weight, -0.05, 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class SPModel(nn.Module):
    def __init__(self, dim: int = 24, hidden: int = 72, depth: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(SPBlock(dim, hidden) for _ in range(depth))
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.head(x)
