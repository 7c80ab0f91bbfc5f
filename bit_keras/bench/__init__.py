"""`bit_keras bench`'s measurements, one module a job.

- `steps`: one configuration (`Config`) and the step that runs it; `throughput`: `compare` /
  `benchmark`, steps interleaved with the `peak` probe (`MatmulProbe`).
- `counts`: MACs and activation bytes from the architecture (parameters: `Architecture.num_params`).
- `machine`: CPU name, usable cores, resident memory (/proc).
- `group_norm`: the GroupNormalization A/B; `input` (with `jpegs`): the input pipeline's supply;
  `memory`: peak memory of fine-tuning in a fresh subprocess.
"""

from bit_keras.bench.counts import activation_bytes, count_macs
from bit_keras.bench.group_norm import GROUP_NORM_SHAPES, compare_group_norm
from bit_keras.bench.input import GPU_TRAINING_IMAGES_PER_SECOND, format_input_report, input_report, input_throughput
from bit_keras.bench.jpegs import make_jpegs
from bit_keras.bench.machine import (cpu_name, machine_memory_bytes, peak_rss_bytes, reset_peak_rss, rss_bytes,
                                     usable_cores)
from bit_keras.bench.memory import ACCUMULATORS, format_memory_report, measure_memory, memory_report
from bit_keras.bench.peak import PEAK_MATMUL_SIZE, MatmulProbe
from bit_keras.bench.steps import MODES, PRECISIONS, Config, build_model, make_step, parse_variant, with_keras_group_norm
from bit_keras.bench.throughput import benchmark, compare, format_result
