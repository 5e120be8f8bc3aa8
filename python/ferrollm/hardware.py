"""What the machine offers, for defaults and for ``ferrollm info``: physical cores (the thread
default: hyper-threads add nothing to memory-bound decoding), the SIMD tier the kernels use,
total and available RAM."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from ferrollm import _core


@dataclass(frozen=True)
class Hardware:
    cpu: str
    logical_cpus: int
    physical_cores: int
    simd_detected: str
    simd_used: str
    ram_total: int  # bytes
    ram_available: int  # bytes


def _meminfo() -> tuple[int, int]:
    """(total, available) bytes from /proc/meminfo, or sysconf where there is none."""
    try:
        fields = {}
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                fields[name] = int(rest.split()[0]) * 1024
        return fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0))
    except (OSError, KeyError, ValueError, IndexError):
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 0, 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def detect() -> Hardware:
    total, available = _meminfo()
    return Hardware(
        cpu=_cpu_name(),
        logical_cpus=os.cpu_count() or 1,
        physical_cores=_core.physical_cores(),
        simd_detected=_core.isa_detected(),
        simd_used=_core.isa_active(),
        ram_total=total,
        ram_available=available,
    )
