"""Materialization frees the recorded graph; process memory follows."""
from __future__ import annotations

import gc

import torch
import torch.nn as nn

import lazyinit


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        import os
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build() -> nn.Module:
    # 64 MiB tensors: above glibc's largest mmap threshold, so freeing them
    # returns the memory to the system and RSS can show it.
    return nn.Sequential(*[nn.Linear(4096, 4096, bias=False) for _ in range(3)])


def test_graph_and_memory_are_released():
    gc.collect()
    nodes_before = lazyinit.live_graph_nodes()
    rss_before = rss_mib()
    for _ in range(3):
        with lazyinit.LazyInitContext():
            m = build()
        assert lazyinit.live_graph_nodes() > nodes_before
        lazyinit.materialize(m)
        assert lazyinit.live_graph_nodes() == nodes_before
        del m
        gc.collect()
    assert rss_mib() - rss_before < 64, "materialized models were not freed"


def test_each_storage_is_replayed_once():
    torch.manual_seed(0)
    with lazyinit.LazyInitContext():
        m = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
        m[0].weight.data.mul_(0.5)
        clone = m[0].weight.detach().clone()  # reads the weight's storage
    lazyinit.materialize(clone)
    lazyinit.materialize(m)
    for p in m.parameters():
        assert lazyinit.replay_count(p) == 1


def test_no_leak_over_100_builds():
    """Construct, materialize and delete a model 100 times: RSS stays flat."""

    def once() -> None:
        with lazyinit.LazyInitContext():
            m = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128)
            m.register_buffer("table", torch.arange(100).float() * m.linear1.weight.sum().item())
        lazyinit.materialize(m)
        del m

    for _ in range(10):  # warm up allocator caches and op-info tables
        once()
    gc.collect()
    nodes = lazyinit.live_graph_nodes()
    rss_start = rss_mib()
    for _ in range(100):
        once()
    gc.collect()
    assert lazyinit.live_graph_nodes() == nodes
    assert rss_mib() - rss_start < 4, "memory grows with every build"
