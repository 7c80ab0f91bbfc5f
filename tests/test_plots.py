"""The pictures: hyperrule/bench --plot and the curves.png finetune and train runs leave are whole PNGs."""

import struct

import numpy as np

import bit_keras
from bit_keras import plots
from bit_keras.cli import main as cli_main


def _png_size(path):
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    length, kind, width, height = struct.unpack(">I4sII", data[8:24])
    assert (length, kind) == (13, b"IHDR") and data[-8:-4] == b"IEND"
    return width, height


def _pixels(size):
    return tuple(round(inches * plots.DPI) for inches in size)


def _cli(*argv):
    return cli_main._main(cli_main.build_parser().parse_args(list(argv)))


def test_hyperrule_plot(tmp_path, capsys):
    path = tmp_path / "pictures" / "rule.png"
    assert _cli("hyperrule", "--train-size", "50000", "--image-size", "32x32", "--plot", str(path)) == 0
    assert _png_size(path) == _pixels(plots.SCHEDULE_SIZE)
    assert f"picture        {path}" in capsys.readouterr().out
    assert _cli("hyperrule", "--train-size", "50", "--image-size", "32", "--plot", str(tmp_path / "rule.txt")) == 2
    assert "must be a .png, .svg, .pdf file" in capsys.readouterr().err


def test_a_finetune_run_leaves_curves_png(tmp_path):
    from bit_keras.finetune.runner import finetune

    finetune(bit_keras.BiTBackbone((1, 1, 1, 1), 1), dataset="digits", output=tmp_path, batch_size=8, steps=2,
             resolution=16, eval_split="test[:16]", verbose=0)
    assert _png_size(tmp_path / "curves.png") == _pixels(plots.CURVES_SIZE)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing staged left behind


def test_finetune_curves_read_every_session_of_the_csv_log(tmp_path):
    # CSVLogger writes NA for missing values (no eval split, a resumed run's header); a repeated period's last row wins.
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,accuracy,learning_rate,loss,updates,val_accuracy,val_loss\n0,0.1,0.01,2.3,5,NA,NA\n"
                   "1,0.2,0.001,2.1,10,NA,NA\n1,0.25,0.001,2.0,10,0.3,NA\n")
    assert plots.finetune_curves(log, tmp_path / "curves.png", title="t") == str(tmp_path / "curves.png")
    assert _png_size(tmp_path / "curves.png") == _pixels(plots.CURVES_SIZE)
    log.write_text("epoch,loss,updates\n")
    assert plots.finetune_curves(log, tmp_path / "none.png", title="t") is None and not (tmp_path / "none.png").exists()


def test_finetune_curves_draw_the_learning_rate_of_every_update(tmp_path, monkeypatch):
    from bit_keras.hyperrule import hyperrule, shorten

    rule = shorten(hyperrule(1000, (32, 32), batch_size=64), 20)  # warm-up 4, /10 at 6, 12, 18
    log = tmp_path / "metrics.csv"  # three evaluation points: the warm-up and two decays fall between them
    log.write_text("epoch,learning_rate,loss,updates\n0,0.1,2.3,7\n1,0.01,2.1,14\n2,0.001,2.0,20\n")
    drawn = {}
    monkeypatch.setattr(plots, "_curves", lambda path, title, xlabel, panels: drawn.update(panels) or path)
    plots.finetune_curves(log, tmp_path / "curves.png", title="t", rule=rule)
    (steps, rates), = drawn["learning rate (log scale)"].values()
    peak = rule.base_learning_rate
    expected = [peak * min(1, (s + 1) / 4) * 0.1 ** ((s >= 6) + (s >= 12) + (s >= 18)) for s in range(20)]
    assert steps == list(range(20))
    np.testing.assert_allclose(rates, expected, rtol=1e-12)


def test_a_train_run_leaves_curves_png_once_it_has_logged(tmp_path):
    from bit_keras.data import from_arrays
    from bit_keras.train.loop import TrainConfig, train
    from bit_keras.train.upstream_schedules import UPSTREAM_SCHEDULES

    config = TrainConfig(model_dir=str(tmp_path), dataset="arrays", block_units=(1, 1, 1, 1), width=1, max_steps=0,
                         log_every=1, schedule=UPSTREAM_SCHEDULES["bit-s"].replace(batch_size=8, image_size=32))
    source = from_arrays(np.zeros((16, 8, 8, 3), np.uint8), np.arange(16) % 4)
    train(config, source=source, log=lambda line: None)
    assert not (tmp_path / "curves.png").exists()  # no step logged: no picture
    config.max_steps = 2
    train(config, source=source, log=lambda line: None)
    assert _png_size(tmp_path / "curves.png") == _pixels(plots.CURVES_SIZE)


def test_bench_plot(tmp_path, capsys):
    path = tmp_path / "bench.png"
    assert _cli("bench", "--variant", "r1-1-1-1x1", "--resolution", "32", "--batch", "1", "--steps", "1",
                "--plot", str(path)) == 0
    assert _png_size(path) == _pixels(plots.BENCH_SIZE)
    assert capsys.readouterr().out.splitlines()[-1] == f"picture: {path}"
    assert _cli("bench", "--variant", "r1-1-1-1x1", "--plot", str(tmp_path / "bench.jpg")) == 2  # before timing
    assert "must be a .png, .svg, .pdf file" in capsys.readouterr().err
