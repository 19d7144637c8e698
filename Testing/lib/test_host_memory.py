"""The command-line tool's malloc setting (issue 7): large CPU tensors come from malloc's heap, whose freed pages are
reused, instead of a fresh mmap per tensor (benchmarks/RESULTS.md: the Hiera-S encoder at 1024 px 3.2 -> 2.3 s per
frame on the 2-core CPU). Each check runs in a fresh interpreter, because the setting is per process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")

# Where does a freed-and-reallocated 96 MB tensor live: in the [heap] mapping, or in an anonymous mapping of its own?
PROBE = """
import sys, torch
from TextPromptSegLib.engine.device import keep_freed_host_memory
kept = keep_freed_host_memory() if sys.argv[1] == "keep" else False
x = torch.ones(24 * 2**20); del x  # 96 MB, freed: with the setting, its pages stay in the heap
y = torch.empty(24 * 2**20)
ptr = y.data_ptr()
for line in open("/proc/self/maps"):
    span, rest = line.split(" ", 1)
    lo, hi = (int(v, 16) for v in span.split("-"))
    if lo <= ptr < hi:
        print(kept, "heap" if rest.rstrip().endswith("[heap]") else "own-mapping")
"""


def probe(mode: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return out.stdout.strip()


def test_large_tensors_reuse_the_heap_when_freed_memory_is_kept():
    assert probe("keep") == "True heap"
    assert probe("system") == "False own-mapping"  # glibc's default: a fresh mmap above its 32 MB threshold


def test_the_setting_can_be_turned_off_by_environment():
    assert probe("keep", TEXTPROMPTSEG_MALLOC="system") == "False own-mapping"


def test_the_command_line_tool_applies_it():
    out = subprocess.run([sys.executable, "-m", "TextPromptSegLib.cli", "info"], capture_output=True, text=True,
                         check=True)
    assert "freed tensors' memory is kept for reuse" in out.stdout
