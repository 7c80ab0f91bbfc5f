"""The machine's practical peak: a large matrix product timed between a benchmark's steps."""

from __future__ import annotations

import time

PEAK_MATMUL_SIZE = 2048


class MatmulProbe:
    """A large matrix product in `dtype` (float32 or bfloat16): the machine's practical peak in that precision."""

    def __init__(self, size: int = PEAK_MATMUL_SIZE, dtype: str = "float32"):
        import keras

        self.size = size
        self.dtype = dtype
        self.flops = 2 * size ** 3
        self._a = keras.random.normal((size, size), dtype=dtype, seed=0)
        self._b = keras.random.normal((size, size), dtype=dtype, seed=1)
        self.time()  # first call pays for kernel selection

    def describe(self) -> str:
        return f"{self.dtype} matmul {self.size}x{self.size}"

    def time(self) -> float:
        import keras

        start = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.matmul(self._a, self._b)[0, 0], "float32"))
        return time.perf_counter() - start
