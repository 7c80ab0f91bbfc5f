"""--precision decided once: auto per device, and a warning where bfloat16 is only emulated."""

import pytest

from bit_keras.errors import ConfigError
from bit_keras.precision import bfloat16_warning, cpu_bfloat16, resolve_precision


class TPUStrategyV2:  # what the check looks at: the strategy's class name, as Keras and TF name it
    pass


def test_auto_means_bfloat16_on_a_tpu_and_float32_elsewhere():
    assert resolve_precision("auto", None) == "float32"
    assert resolve_precision("auto", TPUStrategyV2()) == "bfloat16"
    assert resolve_precision("float32", TPUStrategyV2()) == "float32"
    assert resolve_precision("bfloat16") == "bfloat16"
    with pytest.raises(ConfigError, match="auto, float32, bfloat16"):
        resolve_precision("fp16")


def test_bfloat16_is_warned_about_only_where_it_is_emulated():
    warning = bfloat16_warning("bfloat16", accelerator=False, cpu_flags=[])
    assert "no bfloat16 instructions" in warning and "--precision float32" in warning
    assert bfloat16_warning("bfloat16", accelerator=False, cpu_flags=["avx512_bf16"]) is None
    assert bfloat16_warning("bfloat16", accelerator=True, cpu_flags=[]) is None
    assert bfloat16_warning("bfloat16", TPUStrategyV2(), accelerator=False, cpu_flags=[]) is None
    assert bfloat16_warning("float32", accelerator=False, cpu_flags=[]) is None


def test_the_cpu_flags_are_read_from_cpuinfo(tmp_path):
    native, emulated = tmp_path / "native", tmp_path / "emulated"
    native.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    emulated.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    assert cpu_bfloat16(str(native)) == ["avx512_bf16", "amx_bf16"]
    assert cpu_bfloat16(str(emulated)) == []
    assert cpu_bfloat16(str(tmp_path / "absent")) == []


def test_train_warns_in_its_header_where_bfloat16_is_emulated(tmp_path, monkeypatch):
    import numpy as np

    from bit_keras import precision
    from bit_keras.data import from_arrays
    from bit_keras.train.loop import TrainConfig, train
    from bit_keras.train.upstream_schedules import UPSTREAM_SCHEDULES

    monkeypatch.setattr(precision, "cpu_bfloat16", lambda: [])
    monkeypatch.setattr(precision, "_has_accelerator", lambda: False)
    config = TrainConfig(model_dir=str(tmp_path), dataset="arrays", block_units=(1, 1, 1, 1), width=1, max_steps=0,
                         precision="bfloat16", schedule=UPSTREAM_SCHEDULES["bit-s"].replace(batch_size=8, image_size=32))
    lines = []
    train(config, source=from_arrays(np.zeros((16, 8, 8, 3), np.uint8), np.arange(16) % 4), log=lines.append)
    assert any("no bfloat16 instructions" in line and line.startswith("warning:") for line in lines), lines
    assert any("precision bfloat16" in line for line in lines)


@pytest.mark.parametrize("flags", [[], ["avx512_bf16", "amx_bf16"]], ids=["emulated", "native"])
def test_the_finetuner_warns_about_bfloat16_only_where_the_cpu_emulates_it(monkeypatch, flags):
    import warnings

    import bit_keras
    from bit_keras import precision
    from bit_keras.finetune import build_finetuner

    monkeypatch.setattr(precision, "cpu_bfloat16", lambda: flags)
    monkeypatch.setattr(precision, "_has_accelerator", lambda: False)
    backbone = bit_keras.BiTBackbone((1, 1, 1, 1), width=1, dtype="mixed_bfloat16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ft = build_finetuner(backbone, num_classes=3, train_size=100, image_size=(32, 32), batch_size=8,
                             dtype="mixed_bfloat16")
        float32 = build_finetuner(bit_keras.BiTBackbone((1, 1, 1, 1), width=1), num_classes=3, train_size=100,
                                  image_size=(32, 32), batch_size=8)
    emulated = [w for w in caught if issubclass(w.category, precision.EmulatedBFloat16Warning)]
    assert float32.precision_warning is None
    if flags:
        assert ft.precision_warning is None and not emulated
    else:
        assert "no bfloat16 instructions" in ft.precision_warning
        assert [str(w.message) for w in emulated] == [ft.precision_warning]
