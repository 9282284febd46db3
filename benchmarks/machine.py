"""The machine a benchmark ran on, written into every results file.

Machines differ from one run to the next (an Intel Xeon with AVX-512 VNNI one week, an AMD
EPYC without AVX-512 the next), and int8 speed and accuracy depend on the instruction set:
ONNX Runtime's int8 MatMul kernels use AVX-512 VNNI or AVX-VNNI where present and saturate
int16 without them. So each results file records the CPU model and these flags.
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from typing import Any

#: x86 flags recorded (as /proc/cpuinfo names them): AVX2, AVX-512 (foundation, VNNI, BF16),
#: AVX-VNNI (the VEX form on CPUs without AVX-512), AMX (tiles, int8, bf16).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
#: Packages whose version changes the figures.
PACKAGES = ("numpy", "onnxruntime", "torch", "pillow", "pydicom", "pylibjpeg-openjpeg")


def cpu_info(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model, architecture, logical CPUs and ``CPU_FLAGS`` (None each where not x86 Linux)."""
    from cxrmsn.repository import cpu_features

    cpu = cpu_features(cpuinfo, CPU_FLAGS)
    return {
        "model": cpu["model"],
        "machine": cpu["machine"],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "flags": cpu["flags"],
    }


def machine_info() -> dict[str, Any]:
    """``cpu_info`` plus the Python and package versions and the time of the run."""
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu_info(),
        "python": platform.python_version(),
        "packages": versions,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "time": time.strftime("%Y-%m-%d %H:%M"),
    }


def describe(info: dict[str, Any]) -> str:
    """One line for a results.md, e.g. "AMD EPYC (x86_64), 2 CPUs; avx2 yes, avx512f no, ..."."""
    cpu = info["cpu"]
    flags = cpu["flags"]
    if all(value is None for value in flags.values()):
        flag_text = "instruction-set flags unknown (no x86 flags in /proc/cpuinfo)"
    else:
        flag_text = ", ".join(f"{name} {'yes' if value else 'no'}" for name, value in flags.items())
    packages = ", ".join(f"{name} {version}" for name, version in info["packages"].items() if version)
    return (
        f"{cpu['model']} ({cpu['machine']}), {cpu['usable_cpus']} of {cpu['logical_cpus']} CPUs usable; "
        f"{flag_text}. Python {info['python']}, {packages}; {info['time']}"
    )
