"""transformers' own ``from_pretrained`` onto the lazy device, against eager
``from_pretrained`` with the same seed: single-file and sharded safetensors,
``pytorch_model.bin``, missing keys, dtype casts, ties; bytes read and peak
RSS while loading and materializing a rank's pieces of a checkpoint of a few
hundred MiB; the bert-tiny-shaped example through DDP and FSDP2; CUDA
targets. Every checkpoint is saved by the tests into a temporary folder.
Skipped where transformers or safetensors is missing (Debian 12).

    python tests/python/test_pretrained.py --probe DIR   # the I/O probe, alone
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict

import pytest
import torch
import torch.nn as nn

import lazyinit
from lazyinit import Shard, _C
from ckpt_files import (drop_cached, io_accounting_works, read_bytes, reset_peak_rss, rss_kib)

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
pytest.importorskip("safetensors", reason="safetensors is not installed")
if int(transformers.__version__.split(".")[0]) < 5:
    pytest.skip("the lazy from_pretrained path follows transformers 5", allow_module_level=True)

_HERE = os.path.dirname(os.path.abspath(__file__))


def bert_config(**kw: Any):
    """bert-tiny's shape: hidden 128, 2 layers, 2 heads."""
    base = dict(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=512, max_position_embeddings=128)
    base.update(kw)
    return transformers.BertConfig(**base)


def save(model: nn.Module, folder: str, **kw: Any) -> str:
    torch.manual_seed(1234)
    model.save_pretrained(folder, **kw)
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> str:
    torch.manual_seed(99)
    return save(transformers.BertForPreTraining(bert_config()),
                str(tmp_path_factory.mktemp("bert")))


def eager_and_lazy(cls: Any, folder: str, how: str = "context", seed: int = 7, **kw: Any):
    """(eager model, its generator state after, lazy model, random kernels
    run while materializing it); the lazy one materialized on the CPU."""
    torch.manual_seed(seed)
    eager = cls.from_pretrained(folder, **kw)
    rng = torch.get_rng_state()
    torch.manual_seed(seed)
    if how == "context":
        with lazyinit.LazyInitContext():
            lazy = cls.from_pretrained(folder, **kw)
    else:
        with torch.device(lazyinit.device_type):
            lazy = cls.from_pretrained(folder, **kw)
    params = list(lazy.parameters())
    assert params and all(lazyinit.is_lazy(p) for p in params)
    runs = _C._random_runs()
    lazyinit.materialize(lazy, "cpu")
    ran = _C._random_runs() - runs
    assert torch.equal(torch.get_rng_state(), rng), "the generator is not where eager left it"
    return eager, lazy, ran


def assert_same(eager: nn.Module, lazy: nn.Module) -> None:
    from conftest import named_tensors
    te, tl = named_tensors(eager), named_tensors(lazy)
    assert te.keys() == tl.keys()
    for k in te:
        assert tl[k].device.type == "cpu" and te[k].dtype == tl[k].dtype, k
        assert torch.equal(te[k], tl[k]), k


def assert_tied_like(eager: nn.Module, lazy: nn.Module) -> None:
    ids_e = {n: id(p) for n, p in eager.named_parameters(remove_duplicate=False)}
    ids_l = {n: id(p) for n, p in lazy.named_parameters(remove_duplicate=False)}
    groups = lambda ids: sorted(sorted(n for n in ids if ids[n] == i) for i in set(ids.values()))
    assert groups(ids_e) == groups(ids_l)


# ---------------------------------------------------------------- loading
@pytest.mark.parametrize("how", ["context", "device"])
def test_single_file(bert_dir: str, how: str) -> None:
    eager, lazy, ran = eager_and_lazy(transformers.BertForPreTraining, bert_dir, how)
    assert ran == 0  # every init was overwritten by the checkpoint: none computed
    assert_same(eager, lazy)
    assert_tied_like(eager, lazy)
    assert lazy.cls.predictions.decoder.weight is lazy.bert.embeddings.word_embeddings.weight


def test_sharded_safetensors(tmp_path) -> None:
    folder = save(transformers.BertForPreTraining(bert_config()), str(tmp_path),
                  max_shard_size="300KB")
    assert os.path.exists(os.path.join(folder, "model.safetensors.index.json"))
    eager, lazy, ran = eager_and_lazy(transformers.BertForPreTraining, folder)
    assert ran == 0
    assert_same(eager, lazy)


def test_pytorch_model_bin(tmp_path) -> None:
    """A ``torch.save`` checkpoint (transformers 5 reads it, and no longer
    writes it): loaded through ``torch.load(mmap=True, weights_only=True)``."""
    torch.manual_seed(3)
    model = transformers.BertForPreTraining(bert_config())
    model.config.save_pretrained(str(tmp_path))
    torch.save(model.state_dict(), str(tmp_path / "pytorch_model.bin"))
    captured = lazyinit.capture_stats()["bytes"]
    eager, lazy, ran = eager_and_lazy(transformers.BertForPreTraining, str(tmp_path))
    assert ran == 0
    assert_same(eager, lazy)
    # The mapped tensors torch.load returned are recorded without a copy.
    assert lazyinit.capture_stats()["bytes"] - captured < 1 << 16


def test_missing_keys_init_like_eager(tmp_path) -> None:
    """A BertModel checkpoint into BertForPreTraining: the heads are missing
    and get eager's init (same seed); the loaded keys' inits never run."""
    torch.manual_seed(5)
    folder = save(transformers.BertModel(bert_config()), str(tmp_path))
    eager, lazy, ran = eager_and_lazy(transformers.BertForPreTraining, folder, seed=21)
    assert_same(eager, lazy)
    assert_tied_like(eager, lazy)
    heads = [n for n, _ in lazy.named_parameters() if n.startswith("cls.")]
    assert 0 < ran <= len(heads)


@pytest.mark.parametrize("how", ["context", "device"])
def test_dtype_cast(bert_dir: str, how: str) -> None:
    """An fp32 checkpoint loaded as bf16 equals eager's cast."""
    eager, lazy, ran = eager_and_lazy(transformers.BertForPreTraining, bert_dir, how,
                                      dtype=torch.bfloat16)
    assert lazy.bert.encoder.layer[0].attention.self.query.weight.dtype == torch.bfloat16
    assert ran == 0
    assert_same(eager, lazy)


def test_untied_llama_with_missing_lm_head(tmp_path) -> None:
    cfg = transformers.LlamaConfig(vocab_size=131, hidden_size=64, intermediate_size=100,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(2)
    folder = save(transformers.LlamaModel(cfg), str(tmp_path))
    eager, lazy, ran = eager_and_lazy(transformers.LlamaForCausalLM, folder, seed=8)
    assert ran == 1  # lm_head only
    assert_same(eager, lazy)


def test_other_devices_untouched(bert_dir: str) -> None:
    """Outside the lazy device, from_pretrained is transformers' own."""
    torch.manual_seed(0)
    a = transformers.BertForPreTraining.from_pretrained(bert_dir)
    assert not any(lazyinit.is_lazy(p) for p in a.parameters())
    with lazyinit.LazyInitContext():
        with torch.device("cpu"):  # an inner device context takes precedence
            b = transformers.BertForPreTraining.from_pretrained(bert_dir)
    assert not any(lazyinit.is_lazy(p) for p in b.parameters())
    assert_same(a, b)


# ---------------------------------------------------------------- pieces and I/O
def _llama_checkpoint(folder: str) -> int:
    """A ~260 MiB fp32 Llama checkpoint (4 layers, hidden 1024), values
    drawn without building the model eagerly; returns its size."""
    cfg = transformers.LlamaConfig(vocab_size=8192, hidden_size=1024, intermediate_size=2816,
                                   num_hidden_layers=4, num_attention_heads=8,
                                   num_key_value_heads=8, tie_word_embeddings=False)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=gen)
    model.save_pretrained(folder)
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


def _pages_spanned(folder: str, name: str, rank: int, world: int) -> int:
    """Bytes of the file pages that Shard(1, rank, world) of a 2-D tensor
    spans: a column piece whose rows are shorter than a page reads whole
    pages (the page cache's unit), one or two a row."""
    path = os.path.join(folder, "model.safetensors")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(n))[name]
    rows, cols = entry["shape"]
    item = (entry["data_offsets"][1] - entry["data_offsets"][0]) // (rows * cols)
    width = -(-cols // world)
    c0, c1 = min(cols, rank * width), min(cols, (rank + 1) * width)
    base, page = 8 + n + entry["data_offsets"][0], os.sysconf("SC_PAGE_SIZE")
    pages = set()
    for r in range(rows):
        begin, end = base + (r * cols + c0) * item, base + (r * cols + c1) * item
        pages.update(range(begin // page, (end - 1) // page + 1))
    return len(pages) * page


def probe(folder: str) -> Dict[str, Any]:
    """In a fresh process: bytes read and RSS of the lazy from_pretrained,
    then of rank 7 of 8's pieces; the pieces compared to eager slices."""
    import transformers.models.llama.modeling_llama  # noqa: F401 - imports out of the count
    from safetensors import safe_open
    out: Dict[str, Any] = {"peak_reset": reset_peak_rss()}
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    header = 8 + int.from_bytes(open(os.path.join(folder, "model.safetensors"), "rb").read(8),
                                "little")
    drop_cached(folder)
    r0, m0 = read_bytes(), rss_kib()
    torch.manual_seed(0)
    with lazyinit.LazyInitContext():
        model = transformers.LlamaForCausalLM.from_pretrained(folder)
    out.update(size=size, header=header, load_read=read_bytes() - r0,
               load_rss=(rss_kib() - m0) * 1024)
    drop_cached(folder)
    reset_peak_rss()
    r0, m0 = read_bytes(), rss_kib()
    pieces = lazyinit.materialize_module_shards(model, lambda n, t: Shard(0, 7, 8))
    out.update(piece_bytes=sum(p.numel() * p.element_size() for p in pieces.values()),
               piece_read=read_bytes() - r0, piece_peak=(rss_kib("VmHWM") - m0) * 1024)
    drop_cached(folder)
    r0 = read_bytes()
    one = lazyinit.materialize_shard(model.model.layers[1].mlp.down_proj.weight, Shard(1, 3, 8))
    out.update(one_bytes=one.numel() * one.element_size(), one_read=read_bytes() - r0,
               one_pages=_pages_spanned(folder, "model.layers.1.mlp.down_proj.weight", 3, 8))
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        checked = 0
        for name, piece in pieces.items():
            if name in f.keys():  # not the non-persistent rotary buffer
                assert torch.equal(piece, torch.chunk(f.get_tensor(name), 8)[7]), name
                checked += 1
        full = f.get_tensor("model.layers.1.mlp.down_proj.weight")
        assert torch.equal(one, torch.chunk(full, 8, dim=1)[3])
    out["pieces"] = checked
    return out


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("llama"))
    _llama_checkpoint(folder)
    if not io_accounting_works(os.path.join(folder, "model.safetensors")):
        pytest.skip("this file system does not count reads in /proc/self/io (tmpfs?)")
    return folder


def test_reads_only_each_pieces_bytes(llama_dir: str) -> None:
    run = subprocess.run([sys.executable, __file__, "--probe", llama_dir],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    print(out)
    assert out["size"] > 200 << 20
    # Loading reads no tensor data.
    assert out["load_read"] <= 0.01 * out["size"] + out["header"], out
    assert out["load_rss"] <= 32 << 20, out
    # A rank's pieces read their bytes, and hold little more at the peak.
    assert out["pieces"] == 4 * 9 + 3
    assert out["piece_read"] <= 1.1 * out["piece_bytes"], out
    # A column piece of rows shorter than a page: only the pages it spans.
    assert out["one_read"] <= 1.1 * out["one_pages"], out
    if out["peak_reset"]:
        assert out["piece_peak"] <= 1.1 * out["piece_bytes"] + (64 << 20), out


# The distributed seam, rank 7 of 8 of torch's fake process group.
def seam(ctx) -> None:
    import lazyinit.distributed as ld
    from torch.distributed.device_mesh import init_device_mesh
    folder = ctx.args["folder"]
    import transformers.models.llama.modeling_llama  # noqa: F401
    torch.manual_seed(0)
    with lazyinit.LazyInitContext():
        model = transformers.LlamaForCausalLM.from_pretrained(folder)
    mesh = init_device_mesh("cpu", (ctx.world,))
    drop_cached(folder)
    reset_peak_rss()
    r0, m0 = read_bytes(), rss_kib()
    ld.fully_shard(model, mesh)
    ctx.info.update(read=read_bytes() - r0, peak=(rss_kib("VmHWM") - m0) * 1024)

    def pieces_equal() -> None:
        from safetensors import safe_open
        with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
            for name, p in model.named_parameters():
                local = p.to_local()
                want = torch.chunk(f.get_tensor(name), ctx.world)
                want = want[ctx.rank] if ctx.rank < len(want) else local
                assert torch.equal(local, want), name
    ctx.check("pieces_equal", pieces_equal)
    ctx.info["local"] = sum(p.to_local().numel() * p.element_size() for p in model.parameters())


def test_distributed_seam_reads_only_the_rank(llama_dir: str) -> None:
    from dist_harness import assert_all_ok, run_world
    from dist_models import has_dtensor_engines
    if not has_dtensor_engines():
        pytest.skip("FSDP2 and DTensor are public from torch 2.6")
    outs = run_world(1, "test_pretrained:seam", fake=(7, 8), folder=llama_dir)
    assert_all_ok(outs, ["pieces_equal"])
    info = outs[0]["info"]
    print(info)
    assert info["read"] <= 1.1 * info["local"], info
    assert info["peak"] <= 1.1 * info["local"] + (64 << 20), info


# ---------------------------------------------------------------- the example, distributed
def example(ctx) -> None:
    """lazy from_pretrained of the bert-tiny-shaped copy, then DDP, and
    FSDP2, through lazyinit.distributed; eager's values on every rank."""
    import lazyinit.distributed as ld
    from torch.distributed.device_mesh import init_device_mesh
    folder = ctx.args["folder"]
    cls = transformers.BertForPreTraining
    torch.manual_seed(0)
    eager = cls.from_pretrained(folder)
    expected = {n: p.detach().clone() for n, p in eager.named_parameters(remove_duplicate=False)}

    def ddp() -> None:
        torch.manual_seed(0)
        with lazyinit.LazyInitContext():
            model = cls.from_pretrained(folder)
        wrapped = ld.ddp(model, "cpu", verify=True)
        for n, p in wrapped.module.named_parameters():
            assert torch.equal(p, expected[n]), n
        loss = wrapped(input_ids=torch.tensor([[1, 2, 3]])).prediction_logits.sum()
        loss.backward()

    def fsdp2() -> None:
        torch.manual_seed(0)
        with lazyinit.LazyInitContext():
            model = cls.from_pretrained(folder)
        # The encoder's layers as blocks: the tied embedding and decoder stay
        # in the root's group (torch's FSDP2 refuses a tie across groups).
        ld.fully_shard(model, init_device_mesh("cpu", (ctx.world,)),
                       blocks=list(model.bert.encoder.layer))
        for n, p in model.named_parameters():
            want = torch.chunk(expected[n], ctx.world)
            want = want[ctx.rank] if ctx.rank < len(want) else p.to_local()
            assert torch.equal(p.to_local(), want), n
        model(input_ids=torch.tensor([[1, 2, 3]])).prediction_logits.sum().backward()

    ctx.check("ddp", ddp)
    ctx.check("fsdp2", fsdp2)


def test_example_ddp_fsdp2(bert_dir: str) -> None:
    from dist_harness import assert_all_ok, run_world
    from dist_models import has_dtensor_engines
    if not has_dtensor_engines():
        pytest.skip("FSDP2 and DTensor are public from torch 2.6")
    outs = run_world(2, "test_pretrained:example", folder=bert_dir)
    assert_all_ok(outs, ["ddp", "fsdp2"])


# ---------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_cuda_whole_and_pieces(bert_dir: str, dtype) -> None:
    kw = {} if dtype is None else {"dtype": dtype}
    torch.manual_seed(0)
    eager = transformers.BertForPreTraining.from_pretrained(bert_dir, device_map="cuda", **kw)
    torch.manual_seed(0)
    with lazyinit.LazyInitContext("cuda"):
        lazy = transformers.BertForPreTraining.from_pretrained(bert_dir, **kw)
    pieces = lazyinit.materialize_module_shards(
        lazy, lambda n, t: Shard(0, 1, 3) if t.dim() else lazyinit.Replicate(), "cuda")
    expected = dict(eager.named_parameters())
    for name, piece in pieces.items():
        if name in expected:
            assert piece.is_cuda
            assert torch.equal(piece, torch.chunk(expected[name], 3)[1]), name
    lazyinit.materialize(lazy, "cuda")
    for name, p in lazy.named_parameters():
        assert p.is_cuda and torch.equal(p, expected[name]), name


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":
        print(json.dumps(probe(sys.argv[2])))
    else:
        sys.exit(pytest.main([__file__, "-q"] + sys.argv[1:]))
