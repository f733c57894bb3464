"""CPU speed settings (neuralcodes.kernels.cpu): what they choose, and that they are harmless."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from neuralcodes.kernels import cpu


def test_cpu_vendor_and_native_bf16_answer_on_any_machine():
    assert isinstance(cpu.cpu_vendor(), str)
    assert isinstance(cpu.native_bf16(), bool)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_page_faults_on_reallocation():
    assert cpu.keep_freed_memory() is True
    cpu.configure("cpu")  # idempotent
    torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # 64 MB: above glibc's default mmap limit

    def faults() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    # Without the setting each 64 MB buffer is a fresh mapping: 16,384 faults of 4 KB each. With
    # it the heap grows for a round or two (other small blocks land above the big one), then the
    # big block is reused without faults.
    assert min(faults() for _ in range(6)) < 5 * 16384 // 4

    # a server hands the memory back: a freed 256 MB buffer leaves the process at once
    cpu.return_freed_memory()
    try:
        def rss() -> int:
            return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()

        big = torch.empty(256 << 20, dtype=torch.uint8).fill_(1)
        held = rss()
        del big
        assert held - rss() > 200 << 20
    finally:
        assert cpu.keep_freed_memory() is True  # and the training setting can come back


def test_configure_leaves_other_devices_alone(monkeypatch):
    called = []
    monkeypatch.setattr(cpu, "keep_freed_memory", lambda: called.append(1) or True)
    cpu.configure(torch.device("cuda"))
    assert not called
    cpu.configure("cpu")
    assert called == [1]
