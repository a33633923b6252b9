"""lazyinit.load_checkpoint: safetensors files, sharded indexes and torch.save
files into lazy (and real) modules, against eager construction with the same
seed followed by ``load_state_dict``; errors for bad files and mismatches,
raised before anything changes; pieces equal to eager's slices.

Safetensors files are written by ``ckpt_files.write_safetensors`` (the
format, no library needed) and, where the safetensors library is installed,
by the library too.
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import struct
import warnings
from typing import Dict

import pytest
import torch
import torch.nn as nn

import lazyinit
from lazyinit import CheckpointError, Replicate, Shard, _C
from ckpt_files import write_index, write_safetensors
from conftest import named_tensors

_HAS_MMAP = "mmap" in __import__("inspect").signature(torch.load).parameters


class Net(nn.Module):
    """Embedding tied to the output head, a norm, a BatchNorm (int64
    num_batches_tracked), a plain buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.lin = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.bn = nn.BatchNorm1d(32)
        self.out = nn.Linear(32, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("scale", torch.rand(4))


def source_state(seed: int = 123) -> Dict[str, torch.Tensor]:
    """A checkpoint's tensors: another seed's model, trained-looking buffers."""
    torch.manual_seed(seed)
    m = Net()
    with torch.no_grad():
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.num_batches_tracked.fill_(7)
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def eager_loaded(state: Dict[str, torch.Tensor], seed: int, strict: bool = True,
                 module=Net):
    torch.manual_seed(seed)
    m = module()
    result = m.load_state_dict(state, strict=strict)
    return m, result, torch.get_rng_state()


def lazy_loaded(path: str, seed: int, module=Net, **kw):
    torch.manual_seed(seed)
    with lazyinit.LazyInitContext():
        m = module()
    result = lazyinit.load_checkpoint(m, path, **kw)
    return m, result


def assert_same_tensors(a: nn.Module, b: nn.Module) -> None:
    ta, tb = named_tensors(a), named_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype, k
        assert torch.equal(ta[k], tb[k]), k


def assert_equal_eager(path: str, state: Dict[str, torch.Tensor], seed: int = 5, **kw) -> None:
    eager, e_result, e_rng = eager_loaded(state, seed, strict=kw.get("strict", True))
    lazy, l_result = lazy_loaded(path, seed, **kw)
    assert all(lazyinit.is_lazy(p) for p in lazy.parameters())
    assert sorted(l_result.missing_keys) == sorted(e_result.missing_keys)
    assert sorted(l_result.unexpected_keys) == sorted(e_result.unexpected_keys)
    runs = _C._random_runs()
    lazyinit.materialize(lazy, "cpu")
    if not e_result.missing_keys:
        # Every random init is overwritten: none is computed, only counted.
        assert _C._random_runs() == runs
    assert torch.equal(torch.get_rng_state(), e_rng)
    assert_same_tensors(lazy, eager)
    assert lazy.head.weight is lazy.emb.weight


# ---------------------------------------------------------------- formats
def test_safetensors_file(tmp_path) -> None:
    state = source_state()
    path = str(tmp_path / "model.safetensors")
    write_safetensors(path, state)
    assert_equal_eager(path, state)
    # The folder finds it by its Hugging Face name.
    assert_equal_eager(str(tmp_path), state, seed=9)


def test_safetensors_written_by_the_library(tmp_path) -> None:
    st = pytest.importorskip("safetensors.torch", reason="the safetensors library is not installed")
    state = source_state()
    state.pop("head.weight")  # the library refuses shared tensors
    path = str(tmp_path / "lib.safetensors")
    st.save_file(state, path)
    eager, e_result, rng = eager_loaded(state, 5, strict=False)
    assert e_result.missing_keys == ["head.weight"]  # load_state_dict: a tie is a key
    lazy, l_result = lazy_loaded(path, 5)  # strict: a tied tensor loaded by one name is not missing
    assert l_result.missing_keys == [] and l_result.unexpected_keys == []
    lazyinit.materialize(lazy, "cpu")
    assert torch.equal(torch.get_rng_state(), rng)
    assert_same_tensors(lazy, eager)


def test_sharded_index(tmp_path) -> None:
    state = source_state()
    keys = sorted(state)
    index = write_index(str(tmp_path), {
        "model-00001-of-00002.safetensors": {k: state[k] for k in keys[:5]},
        "model-00002-of-00002.safetensors": {k: state[k] for k in keys[5:]}})
    assert_equal_eager(index, state)
    assert_equal_eager(str(tmp_path), state, seed=6)  # the folder prefers the index


@pytest.mark.parametrize("zipped", [True, False])
def test_torch_save(tmp_path, zipped: bool) -> None:
    state = source_state()
    path = str(tmp_path / "pytorch_model.bin")
    torch.save(state, path, _use_new_zipfile_serialization=zipped)
    assert_equal_eager(path, state)


def test_torch_save_is_mapped_where_torch_can(tmp_path) -> None:
    if not _HAS_MMAP:
        pytest.skip("this torch's torch.load has no mmap (torch < 2.1)")
    path = str(tmp_path / "ckpt.pt")
    torch.save(source_state(), path)
    torch.manual_seed(0)
    with lazyinit.LazyInitContext():
        m = Net()
    before = lazyinit.capture_stats()
    lazyinit.load_checkpoint(m, path)
    after = lazyinit.capture_stats()
    assert after["bytes"] == before["bytes"]  # recorded without a copy


def test_partial_checkpoint_and_key_map(tmp_path) -> None:
    state = source_state()
    del state["lin.weight"], state["bn.running_var"]
    state["extra.weight"] = torch.ones(3)
    path = str(tmp_path / "partial.safetensors")
    write_safetensors(path, state)
    with pytest.raises(CheckpointError, match="missing keys .*lin.weight"):
        lazy_loaded(path, 0)
    assert_equal_eager(path, state, strict=False)
    # Prefixed keys, renamed back by key_map; a None drops a key.
    prefixed = {"model." + k: v for k, v in source_state().items()}
    prefixed["model.dropped"] = torch.zeros(2)
    path2 = str(tmp_path / "prefixed.safetensors")
    write_safetensors(path2, prefixed)

    def key_map(k: str):
        return None if k.endswith("dropped") else k[len("model."):]
    assert_equal_eager(path2, source_state(), key_map=key_map)


def test_missing_keys_get_eager_init_and_rng(tmp_path) -> None:
    """Only the missing keys' inits run; their values and the generator
    after them are eager's."""
    state = {k: v for k, v in source_state().items() if not k.startswith("out.")}
    path = str(tmp_path / "m.safetensors")
    write_safetensors(path, state)
    eager, _, rng = eager_loaded(state, 11, strict=False)
    lazy, result = lazy_loaded(path, 11, strict=False)
    assert sorted(result.missing_keys) == ["out.bias", "out.weight"]
    runs = _C._random_runs()
    lazyinit.materialize(lazy, "cpu")
    ran = _C._random_runs() - runs
    assert 1 <= ran <= 2  # out.weight and out.bias, never the loaded ones
    assert_same_tensors(lazy, eager)
    assert torch.equal(torch.get_rng_state(), rng)


def test_dtype_cast_like_copy(tmp_path) -> None:
    """An fp32 checkpoint into a bf16 module equals eager's copy_ cast."""
    state = source_state()
    path = str(tmp_path / "c.safetensors")
    write_safetensors(path, state)

    def bf16_net() -> nn.Module:
        return Net().to(torch.bfloat16)
    eager, _, _ = eager_loaded(state, 3, module=bf16_net)
    lazy, _ = lazy_loaded(path, 3, module=bf16_net)
    lazyinit.materialize(lazy, "cpu")
    assert lazy.lin.weight.dtype == torch.bfloat16
    assert_same_tensors(lazy, eager)


def test_real_module(tmp_path) -> None:
    state = source_state()
    path = str(tmp_path / "r.safetensors")
    write_safetensors(path, state)
    eager, _, _ = eager_loaded(state, 1)
    torch.manual_seed(1)
    real = Net()
    params = {k: id(v) for k, v in named_tensors(real).items()}
    lazyinit.load_checkpoint(real, path)
    assert_same_tensors(real, eager)
    assert {k: id(v) for k, v in named_tensors(real).items()} == params


def _chunk(t: torch.Tensor, rank: int, world: int, dim: int = 0) -> torch.Tensor:
    chunks = torch.chunk(t, world, dim=dim)
    return chunks[rank] if rank < len(chunks) else t.narrow(dim, t.shape[dim], 0)


def test_pieces_equal_eager_slices(tmp_path) -> None:
    state = source_state()
    path = str(tmp_path / "s.safetensors")
    write_safetensors(path, state)
    eager, _, _ = eager_loaded(state, 2)
    expected = named_tensors(eager)
    for world in (1, 3, 8):
        for rank in range(world):
            lazy, _ = lazy_loaded(path, 2)
            pieces = lazyinit.materialize_module_shards(
                lazy, lambda n, t: Shard(0, rank, world) if t.dim() else Replicate())
            assert pieces
            for name, piece in pieces.items():
                want = expected[name]
                assert torch.equal(piece, _chunk(want, rank, world) if want.dim() else want), \
                    (name, rank, world)
            one = lazyinit.materialize_shard(lazy.lin.weight, Shard(1, rank, world))
            assert torch.equal(one, _chunk(expected["lin.weight"], rank, world, dim=1))


def _reread(path: str) -> Dict[str, torch.Tensor]:
    """The file's tensors as they are on disk now (a fresh mapping)."""
    from lazyinit._safetensors import SafetensorsFile
    f = SafetensorsFile(path)
    return {k: f.tensor(k).clone() for k in f.keys()}


def test_whole_materialize_maps_the_file_and_keeps_writes(tmp_path) -> None:
    """A parameter that is a plain copy of a checkpoint's bytes becomes a
    private mapping of the file (read on first touch, as eager's mapped
    checkpoints are). Writes to it stay in this process's copy of the page:
    the file, another model over the same file, and pieces whose reads
    drop the pages of the mapping they came from (the same one: these
    tensors share pages) never see them, nor undo them."""
    state = source_state()
    path = str(tmp_path / "m.safetensors")
    write_safetensors(path, state)
    eager, _, _ = eager_loaded(state, 5)
    lazy, _ = lazy_loaded(path, 5)
    other, _ = lazy_loaded(path, 5)
    before = lazyinit.capture_stats()["private_maps"]
    lazyinit.materialize(lazy.lin, "cpu")
    assert lazyinit.capture_stats()["private_maps"] == before + 2
    assert_same_tensors(lazy.lin, eager.lin)
    with torch.no_grad():
        for p in lazy.lin.parameters():
            p.add_(1)
    for rank in range(3):
        for m in (lazy.norm, lazy.out, other.lin):
            lazyinit.materialize_module_shards(
                m, lambda n, t: Shard(0, rank, 3) if t.dim() else Replicate())
    for name, p in lazy.lin.named_parameters():
        assert torch.equal(p, eager.lin.get_parameter(name) + 1), name
    lazyinit.materialize(other, "cpu")
    assert_same_tensors(other, eager)
    lazyinit.materialize(lazy, "cpu")
    assert_same_tensors(lazy.out, eager.out)
    for k, v in _reread(path).items():
        assert torch.equal(v, state[k]), k


def test_mapped_parameters_resize_like_loaded_ones(tmp_path) -> None:
    """Parameters materialized as mappings of the file resize as eager's
    loaded (load_state_dict) ones do: into memory of their own."""
    state = source_state()
    path = str(tmp_path / "m.safetensors")
    write_safetensors(path, state)
    eager, _, _ = eager_loaded(state, 5)
    lazy, _ = lazy_loaded(path, 5)
    before = lazyinit.capture_stats()["private_maps"]
    lazyinit.materialize(lazy, "cpu")
    assert lazyinit.capture_stats()["private_maps"] > before
    for m in (eager, lazy):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "An output ... was resized"
            m.lin.bias.data.resize_(3, 5)
            torch.add(m.lin.weight, 1.0, out=m.out.bias)
    assert_same_tensors(lazy, eager)
    for k, v in _reread(path).items():
        assert torch.equal(v, state[k]), k


def test_replaced_file_is_read_through_the_old_mapping(tmp_path) -> None:
    """The file at the checkpoint's path replaced after the lazy load: the
    values are the loaded file's (its mapping), not the new file's."""
    state = source_state()
    path = str(tmp_path / "m.safetensors")
    write_safetensors(path, state)
    eager, _, _ = eager_loaded(state, 5)
    lazy, _ = lazy_loaded(path, 5)
    write_safetensors(str(tmp_path / "new.safetensors"), source_state(seed=77))
    os.replace(str(tmp_path / "new.safetensors"), path)
    before = lazyinit.capture_stats()["private_maps"]
    lazyinit.materialize(lazy, "cpu")
    assert lazyinit.capture_stats()["private_maps"] == before
    assert_same_tensors(lazy, eager)


# ---------------------------------------------------------------- errors
def _untouched(path: str, match: str, **kw) -> None:
    """Loading ``path`` fails with ``match``; the lazy module is left as it
    was (materializes to eager construction), and so is a real one."""
    torch.manual_seed(4)
    eager = Net()
    rng = torch.get_rng_state()
    torch.manual_seed(4)
    with lazyinit.LazyInitContext():
        lazy = Net()
    with pytest.raises(CheckpointError, match=match):
        lazyinit.load_checkpoint(lazy, path, **kw)
    lazyinit.materialize(lazy, "cpu")
    assert torch.equal(torch.get_rng_state(), rng)
    assert_same_tensors(lazy, eager)
    torch.manual_seed(4)
    real = Net()
    with pytest.raises(CheckpointError, match=match):
        lazyinit.load_checkpoint(real, path, **kw)
    assert_same_tensors(real, eager)


def test_shape_mismatch_names_key_and_file(tmp_path) -> None:
    state = source_state()
    state["norm.bias"] = torch.zeros(31)
    path = str(tmp_path / "shape.safetensors")
    write_safetensors(path, state)
    _untouched(path, r"'norm.bias'.*\[31\].*shape\.safetensors.*\[32\]")


def test_dtype_mismatch_names_key(tmp_path) -> None:
    state = source_state()
    state["lin.bias"] = torch.arange(32)
    path = str(tmp_path / "dtype.safetensors")
    write_safetensors(path, state)
    _untouched(path, r"'lin.bias'.*torch.int64")


def _header(path: str):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, json.loads(f.read(n)), f.read()


def test_truncated_safetensors(tmp_path) -> None:
    path = str(tmp_path / "full.safetensors")
    write_safetensors(path, source_state())
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.safetensors")
    with open(cut, "wb") as f:
        f.write(data[:-100])
    _untouched(cut, r"cut\.safetensors: tensor '.*'.*truncated")
    with open(cut, "wb") as f:
        f.write(data[:20])  # inside the header
    _untouched(cut, r"cut\.safetensors: the header claims")
    with open(cut, "wb") as f:
        f.write(data[:4])
    _untouched(cut, r"cut\.safetensors: 4 bytes")


def test_corrupted_safetensors_headers(tmp_path) -> None:
    path = str(tmp_path / "ok.safetensors")
    write_safetensors(path, source_state())
    n, header, rest = _header(path)

    def rewrite(name: str, h, raw=None) -> str:
        body = raw if raw is not None else json.dumps(h).encode()
        out = str(tmp_path / name)
        with open(out, "wb") as f:
            f.write(struct.pack("<Q", len(body)) + body + rest)
        return out

    past = json.loads(json.dumps(header))
    past["lin.weight"]["data_offsets"] = [len(rest), len(rest) + 16 * 32 * 4]
    _untouched(rewrite("past.safetensors", past), r"past\.safetensors: tensor 'lin.weight'.*ends")
    size = json.loads(json.dumps(header))
    size["lin.weight"]["shape"] = [16, 16]
    _untouched(rewrite("size.safetensors", size), r"size\.safetensors: tensor 'lin.weight'.*need")
    overlap = json.loads(json.dumps(header))
    overlap["norm.bias"]["data_offsets"] = overlap["norm.weight"]["data_offsets"]
    _untouched(rewrite("overlap.safetensors", overlap), r"overlap\.safetensors: tensors .* overlap")
    kind = json.loads(json.dumps(header))
    kind["lin.bias"]["dtype"] = "Q7"
    _untouched(rewrite("kind.safetensors", kind), r"kind\.safetensors: tensor 'lin.bias'.*Q7")
    _untouched(rewrite("json.safetensors", None, raw=b"{not json" + b" " * 7),
               r"json\.safetensors: the safetensors header is not valid JSON")


def test_bad_index(tmp_path) -> None:
    state = source_state()
    index = write_index(str(tmp_path), {"a.safetensors": state})
    with open(index) as f:
        idx = json.load(f)
    idx["weight_map"]["lin.weight"] = "../elsewhere.safetensors"
    with open(index, "w") as f:
        json.dump(idx, f)
    _untouched(index, r"'lin.weight'.*outside the index's folder")
    idx["weight_map"]["lin.weight"] = "b.safetensors"
    write_safetensors(str(tmp_path / "b.safetensors"), {"other": torch.zeros(1)})
    with open(index, "w") as f:
        json.dump(idx, f)
    _untouched(index, r"'lin.weight' is mapped to b\.safetensors, which does not hold it")


def test_corrupted_and_truncated_torch_save(tmp_path) -> None:
    path = str(tmp_path / "ok.pt")
    torch.save(source_state(), path)
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.pt")
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    _untouched(cut, r"cut\.pt: torch\.load failed")
    garbage = str(tmp_path / "garbage.pt")
    with open(garbage, "wb") as f:
        f.write(b"\x80\x02garbage" * 100)
    _untouched(garbage, r"garbage\.pt: torch\.load failed")


class NotATensor:
    """An arbitrary object that weights_only must refuse to unpickle."""


def test_torch_save_with_objects_needs_explicit_opt_in(tmp_path) -> None:
    state = collections.OrderedDict(source_state())
    state["when"] = datetime.datetime(2020, 1, 1)  # noqa: DTZ001
    state["obj"] = NotATensor()
    path = str(tmp_path / "objects.pt")
    torch.save(state, path)
    _untouched(path, r"(?s)objects\.pt: torch\.load failed.*weights_only=True refuses")
    # Opting in unpickles it, and then the non-tensor entry is refused.
    _untouched(path, r"objects\.pt: entry 'when' is a datetime", weights_only=False)


def test_not_a_state_dict(tmp_path) -> None:
    path = str(tmp_path / "list.pt")
    torch.save([torch.zeros(2)], path)
    _untouched(path, r"list\.pt: holds a list")
    with pytest.raises(FileNotFoundError):
        lazyinit.load_checkpoint(Net(), str(tmp_path / "absent.safetensors"))
    os.mkdir(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="a folder without"):
        lazyinit.load_checkpoint(Net(), str(tmp_path / "empty"))
