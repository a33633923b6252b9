"""Model zoo: every torchvision 0.14 builder and the torchaudio 0.13 models,
built lazily and materialized, against eager construction.

For each model:
  eager: torch.manual_seed(0); model = builder()
  lazy:  torch.manual_seed(0); with LazyInitContext(): model = builder()
         lazyinit.stats(model)            (recorded: early-materialized elements)
         lazyinit.materialize(model, "cpu")
and then
  * state_dict: same keys, and every entry has the same dtype/shape and is torch.equal;
  * torch.get_rng_state() after lazy build + materialize == after eager build;
  * forward: model.eval(), torch.no_grad(), a small fixed input, the same seed
    before each forward, outputs torch.equal to eager's.

No pretrained weights and no downloads: torchvision builders get weights=None
(and weights_backbone=None where they take it); torchaudio models are built
from their factory functions or classes with small arguments where required.
The quantized torchvision builders are left out.

Large models (> ~60M parameters, or a slow forward) are marked ``slow`` and
skipped unless LAZYINIT_SLOW=1. The default subset (58 models) takes about
a minute on 2 cores, and all of ``pytest tests/python`` about 2 minutes
(measured 2026-11-25: 124.7 s); the whole zoo about 50 minutes:

    PYTHONPATH=python /usr/bin/python3 -m pytest -q tests/python/test_zoo.py
    LAZYINIT_SLOW=1 PYTHONPATH=python /usr/bin/python3 -m pytest -q tests/python/test_zoo.py

``benchmarks/zoo_report.py`` runs every model (slow ones included) through
:func:`check_model` and writes docs/compatibility.md.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch
import torch.nn as nn

_HERE = os.path.dirname(os.path.abspath(__file__))
_PY = os.path.normpath(os.path.join(_HERE, "..", "..", "python"))
if _PY not in sys.path:
    sys.path.insert(0, _PY)

import lazyinit  # noqa: E402

try:  # the zoo needs both; without them the module is skipped, not failed
    import torchvision
    import torchvision.models as tvm
    import torchaudio
    import torchaudio.models as tam
except ImportError as e:  # pragma: no cover
    torchvision = torchaudio = None
    _IMPORT_ERROR = e
else:
    _IMPORT_ERROR = None

SEED = 0           # construction seed
FORWARD_SEED = 1   # seed set before each forward pass
INPUT_SEED = 1234  # inputs come from a private generator: the global RNG is untouched
RUN_SLOW = os.environ.get("LAZYINIT_SLOW", "") not in ("", "0")

# --------------------------------------------------------------------------
# the zoo
# --------------------------------------------------------------------------


@dataclasses.dataclass
class ZooModel:
    name: str
    family: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], Tuple[tuple, dict]]   # -> (args, kwargs)
    prepare: Optional[Callable[[nn.Module], None]] = None     # before forward (both models)
    slow: bool = False
    note: str = ""


def _rand(g, *shape):
    return torch.rand(*shape, generator=g)


def _randn(g, *shape):
    return torch.randn(*shape, generator=g)


def _randint(g, high, *shape):
    return torch.randint(0, high, shape, generator=g)


# Slow: > ~60M parameters, or several seconds (eager + lazy + materialize +
# forwards) on 2 cores; measured, see the time column of docs/compatibility.md.
_TV_SLOW = {
    # > 60M parameters
    "alexnet", "convnext_base", "convnext_large", "efficientnet_b7", "efficientnet_v2_l",
    "regnet_x_32gf", "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf",
    "resnet152", "resnext101_32x8d", "resnext101_64x4d", "swin_b", "swin_v2_b",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16", "vit_l_32", "wide_resnet101_2",
    "wide_resnet50_2",
    # slow construction or forward
    "convnext_small", "convnext_tiny", "deeplabv3_resnet50", "deeplabv3_resnet101",
    "densenet161", "densenet201", "efficientnet_b5", "efficientnet_b6", "efficientnet_v2_m",
    "fcn_resnet50", "fcn_resnet101", "maxvit_t", "regnet_x_8gf", "regnet_x_16gf",
    "regnet_y_8gf", "swin_s", "swin_t", "swin_v2_s", "swin_v2_t",
    "mvit_v1_b", "mvit_v2_s", "r2plus1d_18", "s3d",
    "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn_v2",
    "keypointrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn_v2", "ssd300_vgg16",
}


def _tv_family(name: str) -> str:
    mod = tvm.get_model_builder(name).__module__
    for fam in ("detection", "segmentation", "video", "optical_flow", "quantization"):
        if f".{fam}." in mod:
            return fam
    return "classification"


def _small_detection_transform(model: nn.Module) -> None:
    """Shrink the R-CNN/RetinaNet/FCOS resize (800 px) for a fast forward; the
    parameters do not depend on it. SSD has a fixed size and is left alone."""
    t = getattr(model, "transform", None)
    if t is not None and getattr(t, "fixed_size", None) is None:
        t.min_size = (256,)
        t.max_size = 320


def _tv_zoo() -> List[ZooModel]:
    out = []
    for name in tvm.list_models():
        fam = _tv_family(name)
        if fam == "quantization":
            continue
        kwargs: Dict[str, Any] = {"weights": None}
        prepare = None
        if fam in ("detection", "segmentation"):
            kwargs["weights_backbone"] = None
        if fam == "classification":
            size = 299 if name == "inception_v3" else 224
            inputs = (lambda g, s=size: ((_rand(g, 1, 3, s, s),), {}))
        elif fam == "segmentation":
            inputs = lambda g: ((_rand(g, 1, 3, 160, 160),), {})
        elif fam == "detection":
            inputs = lambda g: (([_rand(g, 3, 240, 320)],), {})
            prepare = _small_detection_transform
        elif fam == "video":
            if name.startswith("mvit") or name == "s3d":
                inputs = lambda g: ((_rand(g, 1, 3, 16, 224, 224),), {})
            else:
                inputs = lambda g: ((_rand(g, 1, 3, 4, 56, 56),), {})
        elif fam == "optical_flow":
            inputs = lambda g: ((_rand(g, 1, 3, 128, 128), _rand(g, 1, 3, 128, 128)),
                                {"num_flow_updates": 3})
        else:  # pragma: no cover
            raise AssertionError(fam)

        def build(name=name, kwargs=kwargs):
            return tvm.get_model(name, **kwargs)

        out.append(ZooModel(name, fam, build, inputs, prepare, slow=name in _TV_SLOW))
    return out


_SOURCES = ["bass", "drums", "other", "vocals"]

def _hubert_frames(n_samples: int) -> int:
    """Frames of the default wav2vec2/HuBERT conv feature extractor."""
    n = n_samples
    for k, s in [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2:
        n = (n - k) // s + 1
    return n


def _wav(n=8000):
    return lambda g: ((_randn(g, 1, n),), {})


def _hubert_pretrain_inputs(num_classes, n=8000):
    return lambda g: ((_randn(g, 1, n), _randint(g, num_classes, 1, _hubert_frames(n))), {})


def _small_wav2vec2_kwargs():
    return dict(extractor_mode="group_norm", extractor_conv_layer_config=None,
                extractor_conv_bias=False, encoder_embed_dim=64,
                encoder_projection_dropout=0.1, encoder_pos_conv_kernel=16,
                encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=4,
                encoder_attention_dropout=0.1, encoder_ff_interm_features=128,
                encoder_ff_interm_dropout=0.1, encoder_dropout=0.1,
                encoder_layer_norm_first=False, encoder_layer_drop=0.1)


def _small_hubert_pretrain():
    return tam.hubert_pretrain_model(
        **_small_wav2vec2_kwargs(), mask_prob=0.65, mask_selection="static",
        mask_other=0.0, mask_length=2, no_mask_overlap=False, mask_min_space=1,
        mask_channel_prob=0.1, mask_channel_selection="static", mask_channel_other=0.0,
        mask_channel_length=4, no_mask_channel_overlap=False, mask_channel_min_space=1,
        skip_masked=False, skip_nomask=False, num_classes=20, final_dim=32,
        feature_grad_mult=0.1)


def _small_emformer_rnnt():
    return tam.emformer_rnnt_model(
        input_dim=40, encoding_dim=64, num_symbols=30, segment_length=4,
        right_context_length=2, time_reduction_input_dim=64, time_reduction_stride=2,
        transformer_num_heads=4, transformer_ffn_dim=128, transformer_num_layers=2,
        transformer_dropout=0.1, transformer_activation="gelu",
        transformer_left_context_length=8, transformer_max_memory_size=0,
        transformer_weight_init_scale_strategy="depthwise", transformer_tanh_on_mem=True,
        symbol_embedding_dim=32, num_lstm_layers=2, lstm_layer_norm=True,
        lstm_layer_norm_epsilon=1e-3, lstm_dropout=0.1)


def _rnnt_inputs(input_dim, num_symbols, t=48, u=6):
    return lambda g: ((_randn(g, 1, t, input_dim), torch.tensor([t]),
                       _randint(g, num_symbols, 1, u), torch.tensor([u])), {})


def _ta_zoo() -> List[ZooModel]:
    Z = ZooModel
    wav_family = "audio/wav2vec2"
    return [
        Z("wav2vec2_base", wav_family, lambda: tam.wav2vec2_base(), _wav(), slow=True),
        Z("wav2vec2_large", wav_family, lambda: tam.wav2vec2_large(), _wav(), slow=True),
        Z("wav2vec2_large_lv60k", wav_family, lambda: tam.wav2vec2_large_lv60k(), _wav(), slow=True),
        Z("wav2vec2_model(small)", wav_family,
          lambda: tam.wav2vec2_model(**_small_wav2vec2_kwargs(), aux_num_out=32), _wav()),
        Z("hubert_base", wav_family, lambda: tam.hubert_base(), _wav(), slow=True),
        Z("hubert_large", wav_family, lambda: tam.hubert_large(), _wav(), slow=True),
        Z("hubert_xlarge", wav_family, lambda: tam.hubert_xlarge(), _wav(), slow=True),
        Z("hubert_pretrain_base", wav_family, lambda: tam.hubert_pretrain_base(),
          _hubert_pretrain_inputs(100), slow=True),
        Z("hubert_pretrain_large", wav_family, lambda: tam.hubert_pretrain_large(),
          _hubert_pretrain_inputs(500), slow=True),
        Z("hubert_pretrain_xlarge", wav_family, lambda: tam.hubert_pretrain_xlarge(),
          _hubert_pretrain_inputs(500), slow=True),
        Z("hubert_pretrain_model(small)", wav_family, _small_hubert_pretrain,
          _hubert_pretrain_inputs(20)),
        Z("Conformer(small)", "audio/asr",
          lambda: tam.Conformer(input_dim=80, num_heads=4, ffn_dim=128, num_layers=4,
                                depthwise_conv_kernel_size=31),
          lambda g: ((_randn(g, 1, 50, 80), torch.tensor([50])), {})),
        Z("Emformer(small)", "audio/asr",
          lambda: tam.Emformer(input_dim=80, num_heads=4, ffn_dim=128, num_layers=4,
                               segment_length=4, right_context_length=1),
          lambda g: ((_randn(g, 1, 21, 80), torch.tensor([20])), {})),
        Z("emformer_rnnt_base", "audio/asr", lambda: tam.emformer_rnnt_base(num_symbols=4097),
          _rnnt_inputs(80, 4097, t=96), slow=True),
        Z("emformer_rnnt_model(small)", "audio/asr", _small_emformer_rnnt,
          _rnnt_inputs(40, 30)),
        Z("DeepSpeech(n_feature=40)", "audio/asr", lambda: tam.DeepSpeech(n_feature=40),
          lambda g: ((_randn(g, 1, 1, 50, 40),), {})),
        Z("Wav2Letter", "audio/asr", lambda: tam.Wav2Letter(),
          lambda g: ((_randn(g, 1, 1, 8000),), {})),
        Z("Tacotron2", "audio/tts", lambda: tam.Tacotron2(),
          lambda g: ((_randint(g, 148, 1, 20), torch.tensor([20]), _randn(g, 1, 80, 30),
                      torch.tensor([30])), {})),
        Z("WaveRNN", "audio/tts",
          lambda: tam.WaveRNN(upsample_scales=[5, 5, 8], n_classes=512, hop_length=200),
          lambda g: ((_randn(g, 1, 1, (6 - 5 + 1) * 200), _randn(g, 1, 1, 128, 6)), {})),
        Z("conv_tasnet_base", "audio/separation", lambda: tam.conv_tasnet_base(),
          lambda g: ((_randn(g, 1, 1, 4000),), {})),
        Z("hdemucs_low", "audio/separation", lambda: tam.hdemucs_low(sources=_SOURCES),
          lambda g: ((_randn(g, 1, 2, 22050),), {})),
        Z("hdemucs_medium", "audio/separation", lambda: tam.hdemucs_medium(sources=_SOURCES),
          lambda g: ((_randn(g, 1, 2, 22050),), {}), slow=True),
        Z("hdemucs_high", "audio/separation", lambda: tam.hdemucs_high(sources=_SOURCES),
          lambda g: ((_randn(g, 1, 2, 22050),), {}), slow=True),
    ]


def zoo() -> List[ZooModel]:
    if _IMPORT_ERROR is not None:
        return []
    return _tv_zoo() + _ta_zoo()


def zoo_by_name() -> Dict[str, ZooModel]:
    return {m.name: m for m in zoo()}


# --------------------------------------------------------------------------
# comparison helpers
# --------------------------------------------------------------------------

def _unique_tensors(module: nn.Module) -> List[torch.Tensor]:
    seen, out = set(), []
    for t in list(module.parameters()) + [b for b in module.buffers() if b is not None]:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _tensor_diff(name: str, e: torch.Tensor, a: torch.Tensor) -> Optional[str]:
    if a.dtype != e.dtype:
        return f"{name}: dtype {a.dtype} != {e.dtype}"
    if a.shape != e.shape:
        return f"{name}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    if a.device != e.device:
        return f"{name}: device {a.device} != {e.device}"
    if torch.equal(a, e):
        return None
    bad = a != e
    if e.is_floating_point() or e.is_complex():
        # torch.equal is False for NaN == NaN, even eager against itself: NaNs
        # in the same places count as equal, everything else must be bitwise equal
        bad &= ~(torch.isnan(a) & torch.isnan(e))
        if not bool(bad.any()):
            return None
        d = (a[bad].double() - e[bad].double()).abs()
        return (f"{name}: values differ in {int(bad.sum())}/{e.numel()} elements, "
                f"max abs diff {d.max().item():.3g}")
    return f"{name}: values differ in {int(bad.sum())}/{e.numel()} elements"


def state_dict_diffs(eager: nn.Module, lazy: nn.Module) -> List[str]:
    es, ls = eager.state_dict(), lazy.state_dict()
    if list(es) != list(ls):
        return [f"state_dict keys differ: only eager {sorted(set(es) - set(ls))[:5]}, "
                f"only lazy {sorted(set(ls) - set(es))[:5]}"]
    out = []
    for k in es:
        if lazyinit.is_lazy(ls[k]):
            out.append(f"{k}: still lazy after materialize")
            continue
        d = _tensor_diff(k, es[k], ls[k])
        if d:
            out.append(d)
    return out


def output_diffs(e: Any, a: Any, path: str = "out") -> List[str]:
    if isinstance(e, torch.Tensor):
        if not isinstance(a, torch.Tensor):
            return [f"{path}: {type(a).__name__} != Tensor"]
        d = _tensor_diff(path, e.detach(), a.detach())
        return [d] if d else []
    if isinstance(e, dict):
        if list(e) != list(a):
            return [f"{path}: keys {list(a)} != {list(e)}"]
        return [x for k in e for x in output_diffs(e[k], a[k], f"{path}[{k!r}]")]
    if isinstance(e, (list, tuple)):
        if type(e) is not type(a) or len(e) != len(a):
            return [f"{path}: {type(a).__name__}[{len(a)}] != {type(e).__name__}[{len(e)}]"]
        return [x for i, (p, q) in enumerate(zip(e, a)) for x in output_diffs(p, q, f"{path}[{i}]")]
    if e != a:
        return [f"{path}: {a!r} != {e!r}"]
    return []


def _forward(spec: ZooModel, model: nn.Module):
    g = torch.Generator().manual_seed(INPUT_SEED)
    args, kwargs = spec.inputs(g)
    torch.manual_seed(FORWARD_SEED)
    random.seed(FORWARD_SEED)
    try:
        import numpy as np
        np.random.seed(FORWARD_SEED)
    except ImportError:  # pragma: no cover
        pass
    with torch.no_grad():
        return model(*args, **kwargs)


# --------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------

class ZooFailure(AssertionError):
    pass


def check_model(spec: ZooModel, rec: Optional[Dict[str, Any]] = None,
                forward: bool = True) -> Dict[str, Any]:
    """Eager vs lazy + materialize for one zoo model. Fills ``rec`` as it goes
    (so a caller catching the exception still has the measurements) and raises
    ZooFailure listing every mismatch, or lets lazyinit's own exception through."""
    rec = {} if rec is None else rec
    rec.update(name=spec.name, family=spec.family, slow=spec.slow)
    t0 = time.perf_counter()

    torch.manual_seed(SEED)
    eager = spec.build()
    eager_rng = torch.get_rng_state()
    rec["eager_build_s"] = time.perf_counter() - t0
    rec["params"] = sum(p.numel() for p in eager.parameters())
    rec["elements"] = sum(t.numel() for t in _unique_tensors(eager))

    rec["stage"] = "lazy build"
    t1 = time.perf_counter()
    torch.manual_seed(SEED)
    with lazyinit.LazyInitContext():
        lazy = spec.build()
    rec["lazy_build_s"] = time.perf_counter() - t1

    # before materialize: how many elements had their values computed early
    st = lazyinit.stats(lazy)
    total = st.elements_lazy + st.elements_materialized
    stayed_lazy = sum(t.numel() for t in _unique_tensors(lazy)
                      if lazyinit.is_lazy(t) and not lazyinit._C._was_early(t))
    rec["elements_early"] = st.elements_early
    rec["elements_real_before"] = st.elements_materialized
    rec["lazy_rate"] = stayed_lazy / total if total else 1.0

    rec["stage"] = "materialize"
    t2 = time.perf_counter()
    lazyinit.materialize(lazy, "cpu", progress=False)
    rec["materialize_s"] = time.perf_counter() - t2
    lazy_rng = torch.get_rng_state()

    problems: List[str] = []
    rec["stage"] = "compare"
    sd = state_dict_diffs(eager, lazy)
    rec["state_dict_equal"] = not sd
    problems += sd
    rec["rng_equal"] = torch.equal(eager_rng, lazy_rng)
    if not rec["rng_equal"]:
        problems.append("torch.get_rng_state() after lazy build + materialize != after eager build")
    if lazyinit.is_lazy(lazy):
        problems.append("model still lazy after materialize")

    if forward:
        rec["stage"] = "forward"
        for m in (eager, lazy):
            m.eval()
            if spec.prepare:
                spec.prepare(m)
        t3 = time.perf_counter()
        out_e = _forward(spec, eager)
        rec["forward_s"] = time.perf_counter() - t3
        out_l = _forward(spec, lazy)
        fd = output_diffs(out_e, out_l)
        if fd:
            # is eager itself deterministic on CPU?
            again = output_diffs(out_e, _forward(spec, eager))
            if again:
                rec["forward_equal"] = "n/a (eager nondeterministic)"
                rec["note"] = "eager forward differs from itself: " + "; ".join(again[:3])
                fd = []
            else:
                rec["forward_equal"] = False
        else:
            rec["forward_equal"] = True
        problems += fd
    rec["total_s"] = time.perf_counter() - t0
    rec["stage"] = "done"
    del eager, lazy
    if problems:
        raise ZooFailure(f"{spec.name}: " + "\n  ".join(problems[:20])
                         + (f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else ""))
    return rec


# --------------------------------------------------------------------------
# pytest
# --------------------------------------------------------------------------

pytestmark = pytest.mark.skipif(_IMPORT_ERROR is not None,
                                reason=f"torchvision/torchaudio not importable: {_IMPORT_ERROR}")

_slow_skip = pytest.mark.skipif(not RUN_SLOW, reason="slow zoo model: set LAZYINIT_SLOW=1")


def _params():
    out = []
    for m in zoo():
        marks = [pytest.mark.slow, _slow_skip] if m.slow else []
        out.append(pytest.param(m, id=m.name, marks=marks))
    return out


@pytest.fixture(autouse=True)
def _restore_global_rng():
    state = torch.get_rng_state()
    py_state = random.getstate()
    yield
    torch.set_rng_state(state)
    random.setstate(py_state)


@pytest.mark.parametrize("spec", _params())
def test_zoo_model(spec: ZooModel):
    """state_dict, RNG state and forward output equal to eager construction."""
    check_model(spec)


def test_real_inplace_random_after_cpu_with_pending_lazy_random():
    """Minimal form of torchaudio's hubert_pretrain_* init
    (``components._init_transformer_params``: ``w.copy_(w.cpu().normal_()...)``),
    which the zoo found: ``t.cpu()`` during construction materializes ``t`` in
    place; the in-place random op on the real result must draw after the
    still-pending lazy random ops, as eager construction does."""
    def build():
        a = torch.empty(3).uniform_()
        b = torch.empty(3)
        b.copy_(b.cpu().normal_())
        return a, b

    torch.manual_seed(SEED)
    ea, eb = build()
    rng = torch.get_rng_state()
    torch.manual_seed(SEED)
    with lazyinit.LazyInitContext():
        la, lb = build()
    lazyinit.materialize(la, "cpu")
    lazyinit.materialize(lb, "cpu")
    assert torch.equal(ea, la)
    assert torch.equal(eb, lb), f"eager {eb} != lazy {lb}"
    assert torch.equal(rng, torch.get_rng_state()), "RNG state differs from eager"
