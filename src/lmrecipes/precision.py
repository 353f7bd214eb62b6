"""bf16 where the hardware computes it natively: the choice behind `bf16: auto`.

A CPU multiplies bf16 matrices natively when it has AVX512-BF16 or AMX (Intel Sapphire Rapids and later, AMD Zen 4
and later); other x86 CPUs emulate bf16 and are faster in fp32. The flags come from /proc/cpuinfo; where it does
not exist, torch's own oneDNN check decides.
"""

from __future__ import annotations

import os

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpuinfo_value(field: str, path: str = "/proc/cpuinfo") -> str | None:
    """The first value of `field` (e.g. "model name", "flags") in /proc/cpuinfo (Linux), or None."""
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        for line in handle:
            if line.startswith(field) and line[len(field):].lstrip().startswith(":"):
                return line.split(":", 1)[1].strip()
    return None


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags (Linux), or None where they cannot be read."""
    flags = cpuinfo_value("flags", path)
    return None if flags is None else set(flags.split())


def onednn_bf16() -> bool:
    """torch's oneDNN check: bf16 kernels available (also emulated ones on AVX-512 CPUs without native bf16);
    it follows ONEDNN_MAX_CPU_ISA."""
    import torch

    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


def cpu_bf16_choice(flags: set[str] | None) -> tuple[bool, str]:
    """(use bf16, why) for a CPU with these flags."""
    if flags is None:
        native = onednn_bf16()
        return native, f"CPU flags unreadable; torch's oneDNN bf16 check says {'yes' if native else 'no'}"
    found = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    if found:
        return True, f"the CPU computes bf16 natively ({', '.join(found)})"
    return False, "the CPU has no native bf16 (no avx512_bf16 / amx_bf16): fp32 is faster there"


def bf16_choice(setting: str, on_cpu: bool) -> tuple[bool, str]:
    """`bf16: auto | true | false` -> (bf16 on, why); `on_cpu` when training runs on the CPU."""
    if setting != "auto":
        return setting == "true", f"bf16: {setting} in the recipe"
    if on_cpu:
        native, why = cpu_bf16_choice(cpu_flags())
        name = next((name for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA") if os.environ.get(name)), None)
        # the CPU has bf16, but oneDNN was told to run as a CPU without bf16 kernels (AVX2 and below: its check is
        # still true for AVX-512 limits, whose bf16 it emulates)
        if native and name and not onednn_bf16():
            return False, f"{name}={os.environ[name]} keeps oneDNN from the CPU's bf16: fp32 is faster"
        return native, why
    import torch

    if torch.cuda.is_available():
        native = torch.cuda.is_bf16_supported(including_emulation=False)  # T4 / V100 emulate it: slower
        return native, f"the GPU {'supports' if native else 'does not support'} bf16"
    return False, "bf16: auto keeps fp32 on this accelerator"
