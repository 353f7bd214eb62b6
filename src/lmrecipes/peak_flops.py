"""A device's peak FLOP/s, the denominator of MFU: accelerators from their data sheets, matched by exact model
(an H100 PCIe is not an H100 SXM; an L40 is not an L4), fp32 at the TF32 figure only when torch allows TF32; CPUs
by a short timed matmul. And the one-line description of what a run trained on."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .ownership import write_json_atomically
from .precision import cpuinfo_value


@dataclass(frozen=True)
class DataSheetPeak:
    """Dense (no sparsity) peaks in TFLOP/s: bf16/fp16 tensor cores, TF32 tensor cores, plain fp32; the source."""

    pattern: str  # matched against torch's device name, case-insensitive, whole words
    bf16: float
    tf32: float
    fp32: float
    source: str


# Ordered: the variants of a chip (NVL, PCIe) before its plain name (the SXM part). Sparse figures on the data
# sheets are twice these. Not listed (MFU unknown, never guessed): GH200, B200, consumer cards, MI250, ...
DATA_SHEET_PEAKS = (
    DataSheetPeak(r"\bH100\b.*\bNVL\b", 835.5, 417.5, 60, "NVIDIA H100 NVL data sheet"),
    DataSheetPeak(r"\bH100\b.*\bPCIe\b", 756, 378, 51, "NVIDIA H100 PCIe data sheet"),
    DataSheetPeak(r"\bH100\b", 989.4, 494.7, 67, "NVIDIA H100 SXM5 data sheet"),
    DataSheetPeak(r"\bH200\b.*\bNVL\b", 835.5, 417.5, 60, "NVIDIA H200 NVL data sheet"),
    DataSheetPeak(r"\bH200\b", 989.4, 494.7, 67, "NVIDIA H200 SXM data sheet"),
    DataSheetPeak(r"\bA100\b", 312, 156, 19.5, "NVIDIA A100 data sheet (SXM and PCIe, 40 and 80 GB alike)"),
    DataSheetPeak(r"\bL40S\b", 362.05, 183, 91.6, "NVIDIA L40S data sheet"),
    DataSheetPeak(r"\bL40\b", 181.05, 90.5, 90.5, "NVIDIA L40 data sheet"),
    DataSheetPeak(r"\bL4\b", 121, 60, 30.3, "NVIDIA L4 data sheet"),
    DataSheetPeak(r"\bA10\b", 125, 62.5, 31.2, "NVIDIA A10 data sheet"),
    DataSheetPeak(r"\bMI300X\b", 1307.4, 653.7, 163.4, "AMD Instinct MI300X data sheet"),
)


def tf32_allowed() -> bool:
    """Whether torch runs fp32 matrix multiplies on TF32 tensor cores (off by default; `tf32: true` in a recipe,
    `torch.backends.cuda.matmul.allow_tf32` or `torch.set_float32_matmul_precision("high")` turn it on)."""
    matmul = torch.backends.cuda.matmul
    return getattr(matmul, "fp32_precision", None) == "tf32" or bool(matmul.allow_tf32) or \
        torch.get_float32_matmul_precision() != "highest"


def table_peak_flops(device_name: str, dtype_name: str, tf32: bool | None = None) -> tuple[float | None, str]:
    """(dense peak FLOP/s, its source) of an accelerator named as torch names it ('NVIDIA H100 PCIe') for 'bf16'
    (fp16 alike) or 'fp32' (TF32's figure when `tf32`, torch's setting by default); (None, why) when not listed."""
    for row in DATA_SHEET_PEAKS:
        if re.search(row.pattern, device_name, flags=re.IGNORECASE):
            if dtype_name in ("bf16", "fp16"):
                return row.bf16 * 1e12, f"{row.source}: {dtype_name} dense {row.bf16:g} TFLOP/s"
            use_tf32 = tf32_allowed() if tf32 is None else tf32
            figure, kind = (row.tf32, "TF32 (allowed)") if use_tf32 else (row.fp32, "fp32 without TF32")
            return figure * 1e12, f"{row.source}: {kind} dense {figure:g} TFLOP/s"
    return None, f"unknown accelerator {device_name!r} (not in peak_flops.DATA_SHEET_PEAKS)"


def peak_flops_per_device(device: torch.device, dtype_name: str) -> tuple[float | None, str]:
    """(peak FLOP/s, where the number comes from). GPUs from the table; CPUs by a short measured matmul."""
    if device.type == "cuda":
        return table_peak_flops(torch.cuda.get_device_name(device), dtype_name)
    if device.type == "cpu":
        return cpu_peak_flops(dtype_name)
    return None, f"unknown device type {device.type!r}"


def cpu_model_name() -> str:
    return cpuinfo_value("model name") or platform.processor() or platform.machine()


# Work of other processes the measurement tolerates beyond the CPUs its threads leave free: half a core of background.
LOAD_SLACK = 0.5
SAMPLE_SECONDS = 0.25


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity: a container's or taskset's share, not the host's count)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def _cpu_times(cpus: set[int]) -> dict[int, tuple[int, int]]:
    times = {}
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                ticks = [int(v) for v in values]
                times[int(name[3:])] = (sum(ticks[:8]), ticks[3] + ticks[4])  # (all, idle + iowait)
    return times


def other_work(cpus: set[int]) -> float | None:
    """CPUs' worth of work that other processes do on `cpus` now: their busy time over SAMPLE_SECONDS while this
    process sleeps (/proc/stat). Hand-written: the load average counts this process's own training too, and decays
    over a minute, so that a machine would look busy right after the run before; None where /proc/stat is missing."""
    try:
        before = _cpu_times(cpus)
        time.sleep(SAMPLE_SECONDS)
        after = _cpu_times(cpus)
    except (OSError, ValueError):
        return None
    busy = 0.0
    for cpu, (total, idle) in before.items():
        spent = after.get(cpu, (total, idle))[0] - total
        busy += (spent - (after[cpu][1] - idle)) / spent if spent > 0 else 0.0
    return busy if before else None


def busy_machine(threads: int) -> str | None:
    """Why a matmul on `threads` threads would not get the cores to itself now ('other processes kept 1.8 of 2 CPUs
    busy'), or None: other work beyond the CPUs the threads leave free and a little background."""
    cpus = usable_cpus()
    work = other_work(cpus)
    if work is not None and work > max(len(cpus) - threads, 0) + LOAD_SLACK:
        return f"other processes kept {work:.1f} of {len(cpus)} CPUs busy"
    return None


def _peak_cache(cache_file: Path | None) -> tuple[Path, dict]:
    cache_file = cache_file or Path(os.environ.get("LMRECIPES_CACHE") or Path.home() / ".cache" / "lmrecipes") \
        / "cpu-peak-flops.json"
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    return cache_file, known if isinstance(known, dict) else {}


def _keep_peak(cache_file: Path, known: dict, key: str, peak: float | None) -> None:
    """Write the cache with `peak` for `key` (None: without it); a read-only home: measured again next time."""
    kept = {name: value for name, value in known.items() if name != key}
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(cache_file, kept if peak is None else {**kept, key: peak})
    except OSError:
        pass


_MEASURED_UNDER_LOAD: dict[str, tuple[float, str]] = {}  # this process's: kept in memory only (remeasure replaces)


def cpu_peak_flops(dtype_name: str, cache_file: Path | None = None, remeasure: bool = False) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from) of this CPU at the current thread count: the best of several timed
    matmuls, measured once per CPU model, thread count, dtype and torch version and kept in a cache file
    ($LMRECIPES_CACHE or ~/.cache/lmrecipes, cpu-peak-flops.json), so that runs on one machine share one basis. A
    peak measured while the machine was busy (`busy_machine`, before or after) is low (and would make every later
    MFU high): it is used for this run only, never kept. `remeasure`: the cached peak proved wrong (a run beat it),
    so it is measured again and replaces the cached one (or, measured under load too, the cached one is dropped)."""
    threads = torch.get_num_threads()
    key = f"{cpu_model_name()} | {threads} threads | {dtype_name} | torch {torch.__version__}"
    cache_file, known = _peak_cache(cache_file)
    if not remeasure and isinstance(known.get(key), (int, float)) and known[key] > 0:
        return float(known[key]), f"CPU matmul peak measured earlier on this machine ({key})"
    busy = busy_machine(threads)
    if not remeasure and busy and key in _MEASURED_UNDER_LOAD:  # still busy: this process's earlier measurement
        return _MEASURED_UNDER_LOAD[key]
    peak = max(measure_cpu_matmul_flops(torch.bfloat16 if dtype_name == "bf16" else torch.float32)
               for _ in range(5))
    busy = busy or busy_machine(threads)
    again = "measured again (the earlier peak was beaten in training)" if remeasure else "measured now"
    if os.environ.get("LOCAL_RANK", "0") != "0":  # processes sharing the cores measured each other: not kept
        return peak, f"CPU matmul peak, best of 5, {again} alongside other processes ({key})"
    if busy:
        if remeasure:
            _keep_peak(cache_file, known, key, None)
        _MEASURED_UNDER_LOAD[key] = (peak, f"CPU matmul peak, best of 5, {again} while the machine was busy ({busy}): "
                                           f"not kept ({key})")
        return _MEASURED_UNDER_LOAD[key]
    _keep_peak(cache_file, known, key, peak)
    return peak, f"CPU matmul peak, best of 5, {again} ({key})"


def measure_cpu_matmul_flops(dtype=torch.float32, size: int = 1024, seconds: float = 0.3) -> float:
    """Achieved FLOP/s of a square matmul on this CPU with the current thread count: a practical peak."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        count += 1
    return 2.0 * size**3 * count / (time.perf_counter() - start)


def describe_hardware(device: torch.device, world_size: int) -> str:
    """What the run trained on, for results and model cards: e.g. '2 x NVIDIA H200' or
    '1 x CPU AMD EPYC (2 threads)'."""
    if device.type == "cuda":
        return f"{world_size} x {torch.cuda.get_device_name(device)}"
    return f"{world_size} x {device.type.upper()} {cpu_model_name()} ({torch.get_num_threads()} threads)".replace(
        "CPU CPU", "CPU")
