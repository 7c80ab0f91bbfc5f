"""`--precision` decided once: auto / float32 / bfloat16 -> the Keras dtype policy, and what bfloat16 costs here.

"auto" means bfloat16 on a TPU (its matrix unit computes in bfloat16) and float32 elsewhere.
An explicit bfloat16 on a CPU without bfloat16 instructions is allowed but warned about:
oneDNN then emulates it, and an R50x1 fine-tuning step measured about 10x slower than in
float32 on an AVX2-only machine (42.7 s against 4.09 s), while a CPU with AVX512_BF16 / AMX
ran it about 1.6x faster than float32.
"""

from __future__ import annotations

import sys

from bit_keras.distribute import is_tpu
from bit_keras.errors import ConfigError

PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
PRECISIONS = ("auto", *PRECISION_POLICIES)
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that compute in bfloat16
EMULATED_BFLOAT16_SLOWDOWN = "about 10x"


def resolve_precision(precision: str, strategy=None) -> str:
    """"float32" or "bfloat16" for `precision` (one of PRECISIONS) under `strategy`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}. Received: precision={precision!r}")
    if precision == "auto":
        return "bfloat16" if is_tpu(strategy) else "float32"
    return precision


def cpu_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> list:
    """The CPU's native bfloat16 instructions from its flags; [] where it has none or they cannot be read."""
    try:
        with open(cpuinfo) as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [flag for flag in BFLOAT16_CPU_FLAGS if flag in flags]
    except OSError:
        pass
    return []


def bfloat16_warning(precision: str, strategy=None, *, accelerator: bool | None = None, cpu_flags=None) -> str | None:
    """One sentence when `precision` (resolved) is bfloat16 on a CPU that only emulates it, else None."""
    if precision != "bfloat16" or is_tpu(strategy):
        return None
    if accelerator is None:
        accelerator = _has_accelerator()
    flags = cpu_bfloat16() if cpu_flags is None else cpu_flags
    if accelerator or flags:
        return None
    return (f"this CPU has no bfloat16 instructions ({' or '.join(BFLOAT16_CPU_FLAGS)}): bfloat16 is emulated and "
            f"runs {EMULATED_BFLOAT16_SLOWDOWN} slower than float32 here; use --precision float32 (or auto)")


class EmulatedBFloat16Warning(UserWarning):
    """bfloat16 asked for on a CPU that only emulates it (`bfloat16_warning` says what it costs)."""


def precision_of_policy(policy: str) -> str:
    """"bfloat16" for a Keras dtype policy name that computes in bfloat16, else "float32"."""
    return "bfloat16" if "bfloat16" in str(policy) else "float32"


def _has_accelerator() -> bool:
    """A GPU or TPU visible to the framework already loaded (nothing new is imported for the question)."""
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))
    if "jax" in sys.modules:
        return sys.modules["jax"].default_backend() != "cpu"
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    return False
