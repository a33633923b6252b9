"""The CUDA region fill (src/region_fill_cuda.cu) against eager CUDA
tensors: any element range of what ``normal_`` / ``uniform_`` write into a
whole tensor, generated alone, equals that range of the whole, bit for bit.

Needs a GPU and a build with ``-DLAZYINIT_CUDA_KERNELS=ON``; skipped
otherwise.
"""
from __future__ import annotations

import random

import pytest
import torch

import lazyinit
from lazyinit import _C


def _kernels_built() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        _C._philox_region_fill(torch.empty(0, device="cuda"), "normal", 0, 0, 1, 0, 1, 0.0, 1.0)
    except RuntimeError as e:
        if "built without" in str(e):
            return False
        raise
    return True


pytestmark = pytest.mark.skipif(not _kernels_built(),
                                reason="needs a GPU and LAZYINIT_CUDA_KERNELS=ON")


def _grid_limit() -> int:
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    return p.multi_processor_count * (p.max_threads_per_multi_processor // 256)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["normal", "uniform"])
@pytest.mark.parametrize("numel", [1, 7, 4097 * 11, 1_100_000, 3_000_001])
def test_region_equals_slice_of_eager(dtype: torch.dtype, kind: str, numel: int) -> None:
    gen = torch.cuda.default_generators[torch.cuda.current_device()]
    torch.cuda.manual_seed(123)
    torch.randn(1000, device="cuda")          # a non-zero offset
    seed, offset = gen.initial_seed(), gen.get_offset()
    a, b = (0.5, 0.02) if kind == "normal" else (-0.3, 0.7)
    full = torch.empty(numel, dtype=dtype, device="cuda")
    getattr(full, kind + "_")(a, b)
    rng = random.Random(numel)
    for world in range(1, 9):
        pieces = torch.arange(numel).chunk(world)
        for rank in rng.sample(range(len(pieces)), len(pieces)):
            if pieces[rank].numel() == 0:
                continue
            begin = int(pieces[rank][0])
            out = torch.empty(pieces[rank].numel(), dtype=dtype, device="cuda")
            _C._philox_region_fill(out, kind, seed, offset, numel, begin, _grid_limit(), a, b)
            assert torch.equal(out, full[begin:begin + out.numel()]), (world, rank)
