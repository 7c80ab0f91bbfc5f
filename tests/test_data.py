"""Data sources, few-shot sampling and the HyperRule pipelines (flip, crop, MixUp), checked in NumPy."""

import dataclasses
import re

import numpy as np
import pytest
import tensorflow as tf

from bit_keras.data import (DatasetInfo, eval_pipeline, few_shot, from_arrays, load_source, mixup, mixup_params,
                            train_pipeline)
from bit_keras.hyperrule import hyperrule


def _rule(resize, crop, mixup_alpha=0.0):
    """A real rule with small resolutions so tests stay fast."""
    return dataclasses.replace(hyperrule(1000, (32, 32)), resize=resize, crop=crop, mixup_alpha=mixup_alpha)


def _grid_images(n, size=8):
    """n images whose pixels are unique within an image (value = 4*(row*size+col) + image index)."""
    base = (np.arange(size * size).reshape(size, size) * 3).astype(np.int64)
    images = np.stack([base + i for i in range(n)])
    return np.repeat(images[..., None], 3, axis=-1).astype(np.uint8)


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


# ---------------------------------------------------------------------------- sources

def test_digits_sizes_and_content():
    from sklearn.datasets import load_digits

    train, train_info = load_source("digits")
    test, test_info = load_source("digits", "test")
    assert (train_info.train_size, test_info.train_size) == (1437, 360)
    assert train_info.num_classes == 10 and train_info.image_size == (8, 8)
    images, labels = map(np.stack, zip(*train.concatenate(test).as_numpy_iterator()))
    assert images.shape == (1797, 8, 8, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert np.array_equal(images[..., 0], images[..., 2])
    digits = load_digits()
    expected = np.round(digits.images * 255 / 16).astype(np.uint8)
    # Together the splits hold every digit exactly once (compare as sorted multisets of images+labels).
    ours = sorted(img[..., 0].tobytes() + bytes([lab]) for img, lab in zip(images, labels))
    theirs = sorted(img.tobytes() + bytes([lab]) for img, lab in zip(expected, digits.target))
    assert ours == theirs
    head, _ = load_source("digits", "train[:100]")
    assert sum(1 for _ in head) == 100
    with pytest.raises(ValueError, match="digits has splits"):
        load_source("digits", "validation")


def _write_png(path, array):
    tf.io.write_file(str(path), tf.io.encode_png(array))


def test_folder_source(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(3):
            shape = (20 + i, 30, 1 if i == 0 else 3)      # one grayscale PNG per class
            image = rng.integers(0, 256, shape, dtype=np.uint8)
            _write_png(tmp_path / name / f"{i}.png", image)
            written[image.tobytes()] = (label, image)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds, info = load_source(f"folder:{tmp_path}")
    assert info.num_classes == 2 and info.class_names == ("cat", "dog") and info.train_size == 6
    assert info.image_size == (21, 30)
    seen = 0
    for image, label in ds.as_numpy_iterator():
        assert image.dtype == np.uint8 and image.shape[-1] == 3
        key = image.tobytes() if image.tobytes() in written else image[..., :1].tobytes()
        expected_label, original = written[key]
        assert label == expected_label
        assert np.array_equal(image, np.broadcast_to(original, image.shape))
        seen += 1
    assert seen == 6
    first, first_info = load_source(f"folder:{tmp_path}", "train[:50%]")
    rest, _ = load_source(f"folder:{tmp_path}", "train[50%:]")
    a = {x.tobytes() for x, _ in first.as_numpy_iterator()}
    b = {x.tobytes() for x, _ in rest.as_numpy_iterator()}
    assert first_info.train_size == 3 and len(a) == 3 and len(b) == 3 and not a & b
    with pytest.raises(ValueError, match="no split sub-folders"):
        load_source(f"folder:{tmp_path}", "test")


def test_folder_with_split_subfolders(tmp_path):
    image = np.full((12, 12, 3), 7, np.uint8)
    for split, classes in (("train", ["a", "b"]), ("test", ["a", "b", "c"])):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            _write_png(tmp_path / split / name / "x.png", image)
    train, info = load_source(f"folder:{tmp_path}", "train")
    test, test_info = load_source(f"folder:{tmp_path}", "test")
    assert info.class_names == test_info.class_names == ("a", "b", "c")
    assert (info.train_size, test_info.train_size) == (2, 3)
    assert sorted(int(y) for _, y in test) == [0, 1, 2]
    with pytest.raises(FileNotFoundError, match="no 'validation'"):
        load_source(f"folder:{tmp_path}", "validation")


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_source(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="No images"):
        load_source(f"folder:{tmp_path}")


def _two_classes(root, per_class=2):
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            _write_png(root / name / f"{i}.png", np.full((10, 12, 3), 40 * i + (name == "dog"), np.uint8))


def test_folder_skips_files_that_are_not_images(tmp_path):
    """Broken files, a truncated JPEG included, are listed in info.skipped at load."""
    _two_classes(tmp_path)
    (tmp_path / "cat" / "random.jpg").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp_path / "cat" / "empty.png").write_bytes(b"")
    jpeg = tf.io.encode_jpeg(np.full((16, 16, 3), 9, np.uint8)).numpy()
    (tmp_path / "dog" / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    ds, info = load_source(f"folder:{tmp_path}")
    assert sorted((f.rsplit("/", 1)[-1], why) for f, why in info.skipped) == [
        ("empty.png", "empty"), ("random.jpg", "not a JPEG, PNG, GIF or BMP image"),
        ("truncated.jpg", "cut short or damaged: it does not decode")]
    assert info.train_size == 4 and info.image_size == (10, 12)
    images = [image for image, _ in ds.as_numpy_iterator()]
    assert len(images) == 4 and all(image.shape == (10, 12, 3) for image in images)


def test_folder_classes_are_non_empty_visible_folders_inside_the_root(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "outside"
    _two_classes(data)
    _two_classes(outside)
    (data / "empty").mkdir()
    for hidden in (".cache", "__MACOSX"):
        (data / hidden).mkdir()
        _write_png(data / hidden / "x.png", np.zeros((4, 4, 3), np.uint8))
    (data / "bird").symlink_to(outside / "cat")                   # a class folder out of the root
    (data / "cat" / "far.png").symlink_to(outside / "dog" / "0.png")
    (data / "dog" / "near.png").symlink_to(data / "cat" / "0.png")   # a link inside the root is followed
    _, info = load_source(f"folder:{data}")
    assert info.class_names == ("cat", "dog") and info.train_size == 5
    assert [(f.rsplit("/", 1)[-1], why) for f, why in info.skipped] == [("far.png", "a link out of the dataset folder")]
    for name in ("dog", "empty"):
        for file in (data / name).iterdir():
            file.unlink()
        (data / name).rmdir()
    with pytest.raises(ValueError, match="one class folder \\('cat'\\); classification needs two or more"):
        load_source(f"folder:{data}")


@pytest.mark.parametrize("source, split, size", [
    ("digits", "train[:200%]", 1437), ("digits", "test[5:3]", 360), ("digits", "train[2000:]", 1437),
    ("digits", "test[360:]", 360), ("digits", "test[:-400]", 360), ("folder", "train[:7]", 6), ("folder", "train[3:3]", 6),
])
def test_slices_must_fit_the_split(source, split, size, tmp_path):
    if source == "folder":
        _two_classes(tmp_path, per_class=3)
        source = f"folder:{tmp_path}"
    base = split.partition("[")[0]
    with pytest.raises(ValueError, match=f"Split '{re.escape(split)}' does not fit {re.escape(source)}: '{base}' has {size} examples"):
        load_source(source, split)
    assert load_source(source, f"{base}[-2:]")[1].train_size == 2
    assert load_source(source, f"{base}[:100%]")[1].train_size == size


@pytest.mark.parametrize("spec", ["", "imagenet", "foo:bar", "tfds:", "folder:", "hub:cifar10"])
def test_bad_specs_list_the_accepted_forms(spec):
    with pytest.raises(ValueError, match="tfds:NAME"):
        load_source(spec)


def test_bad_split_string():
    with pytest.raises(ValueError, match="Bad split"):
        load_source("digits", "train[::2]")


def test_tfds_through_mock_data():
    """tfds.testing.mock_data generates random examples from the registered features, offline."""
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):   # download=False: no probe of the download host
        ds, info = load_source("tfds:cifar10", "train", download=False)
        images, labels = map(np.stack, zip(*ds.as_numpy_iterator()))
        assert info.num_classes == 10 and info.image_size == (32, 32) and info.train_size == 6
        assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
        ds, info = load_source("tfds:mnist", "test", download=False)   # grayscale -> RGB
        image, _ = next(ds.as_numpy_iterator())
        assert info.image_size == (28, 28) and image.shape == (28, 28, 3)
        assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
    with pytest.raises(ValueError, match="cannot build 'no_such_dataset'"):
        load_source("tfds:no_such_dataset")


def test_tfds_not_prepared_offline(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared"):
        load_source("tfds:cifar10", data_dir=str(tmp_path), download=False)


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    """(name, data_dir) of a 10/4-example tfds dataset prepared offline (it downloads nothing)."""
    import tensorflow_datasets as tfds

    class TinyBitKerasTest(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {"image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(num_classes=2)}
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                         supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(10), "test": self._generate_examples(4)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((8, 8, 3), i, np.uint8), "label": i % 2}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("tiny_bit_keras_test", data_dir=data_dir).download_and_prepare()
    return "tfds:tiny_bit_keras_test", data_dir


def test_tfds_download_fails_fast_when_the_host_is_unreachable(tmp_path, monkeypatch):
    """Offline, tfds retried for minutes; one probe of the download host fails in seconds, making no folder."""
    import time

    from bit_keras.data import tfds

    builder = tfds.tfds_builder("cifar10", str(tmp_path / "tfds"))
    assert tfds.download_hosts(builder) == [("www.cs.toronto.edu", 443)]   # from tfds's metadata
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert tfds.download_hosts(builder) == [("proxy.example", 3128)]
    monkeypatch.setattr(tfds, "download_hosts", lambda builder: [("127.0.0.1", 9)])   # nothing listens
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match=r"tfds:cifar10 is not prepared in .* \(127.0.0.1:9 cannot be reached"):
        load_source("tfds:cifar10", data_dir=str(tmp_path / "tfds"))
    assert time.monotonic() - start < 10 and not (tmp_path / "tfds").exists()


def test_prepared_tfds_is_not_probed_and_bad_slices_are_one_line(tiny_tfds, tmp_path, monkeypatch):
    from bit_keras.data import split_size, tfds
    from bit_keras.errors import ConfigError

    name, data_dir = tiny_tfds
    monkeypatch.setattr(tfds, "unreachable", lambda hosts: pytest.fail("a prepared dataset was probed"))
    assert load_source(name, "train", data_dir=data_dir)[1].train_size == 10
    assert split_size(name, "test", data_dir=data_dir) == 4 and split_size(name, "train[:50%]", data_dir=data_dir) == 5
    assert split_size(name, data_dir=str(tmp_path / "none")) is None and not (tmp_path / "none").exists()
    for split in ("train[:200%]", "test[5:3]", "train[2000:]"):
        with pytest.raises(ConfigError, match=f"{name}: bad split '{re.escape(split)}'") as error:
            load_source(name, split, data_dir=data_dir)
        assert "\n" not in str(error.value)


def test_from_arrays_and_its_errors():
    images = np.zeros((4, 5, 6), np.uint8)             # grayscale without channel axis
    ds, info = from_arrays(images, [0, 1, 2, 1], num_classes=5)
    assert info == DatasetInfo("arrays", 5, 4, (5, 6), ("0", "1", "2", "3", "4"))
    assert next(ds.as_numpy_iterator())[0].shape == (5, 6, 3)
    assert from_arrays(images, [0, 1, 2, 1])[1].num_classes == 3
    with pytest.raises(ValueError, match="uint8"):
        from_arrays(images.astype(np.float32), [0, 1, 2, 1])
    with pytest.raises(ValueError, match="shape"):
        from_arrays(np.zeros((4, 5), np.uint8), [0, 1, 2, 1])
    with pytest.raises(ValueError, match="one per image"):
        from_arrays(images, [0, 1, 2])
    with pytest.raises(ValueError, match="< num_classes=2"):
        from_arrays(images, [0, 1, 2, 1], num_classes=2)
    with pytest.raises(ValueError, match=">= 0"):
        from_arrays(images, [0, -1, 2, 1])
    with pytest.raises(ValueError, match="integer"):
        from_arrays(images, [0.0, 1.0, 2.0, 1.0])


# ---------------------------------------------------------------------------- few-shot

def test_few_shot_k_per_class_and_seeds():
    labels = np.repeat(np.arange(4), [9, 7, 12, 5])
    images = np.arange(labels.size, dtype=np.uint8).reshape(-1, 1, 1, 1).repeat(3, -1)
    ds, _ = from_arrays(images, labels)

    def draw(k, seed):
        picked = list(few_shot(ds, k, num_classes=4, seed=seed).as_numpy_iterator())
        return [int(x[0, 0, 0]) for x, _ in picked], np.array([int(y) for _, y in picked])

    ids, picked_labels = draw(5, seed=0)
    assert np.bincount(picked_labels, minlength=4).tolist() == [5, 5, 5, 5]
    assert all(labels[i] == y for i, y in zip(ids, picked_labels))     # each image keeps its own label
    assert len(set(ids)) == 20
    assert draw(5, seed=0)[0] == ids
    assert draw(5, seed=1)[0] != ids
    assert np.bincount(draw(1, seed=3)[1]).tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="class 3 has 5"):
        few_shot(ds, 6, num_classes=4)
    with pytest.raises(ValueError, match="positive"):
        few_shot(ds, 0, num_classes=4)


# ---------------------------------------------------------------------------- pipelines

def test_train_pipeline_shapes_dtypes_and_ranges():
    rng = np.random.default_rng(0)
    ds, _ = from_arrays(rng.integers(0, 256, (10, 12, 14, 3), dtype=np.uint8), np.arange(10) % 3)
    batches = _batches(train_pipeline(ds, _rule(20, 16), batch_size=4, num_classes=3, seed=0, repeat=False))
    assert len(batches) == 2                                   # 10 examples, batch 4: remainder dropped
    for images, labels in batches:
        assert images.shape == (4, 16, 16, 3) and images.dtype == np.float32
        assert labels.shape == (4, 3) and labels.dtype == np.float32
        assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.5
        assert np.array_equal(labels.sum(1), np.ones(4)) and set(np.unique(labels)) == {0.0, 1.0}
    repeated = train_pipeline(ds, _rule(20, 16), batch_size=4, num_classes=3, seed=0)
    assert len(list(repeated.take(7))) == 7                    # repeats past one epoch
    again = _batches(train_pipeline(ds, _rule(20, 16), batch_size=4, num_classes=3, seed=0, repeat=False))
    other = _batches(train_pipeline(ds, _rule(20, 16), batch_size=4, num_classes=3, seed=1, repeat=False))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again))      # a seed fixes the stream
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(batches, other))


def test_flips_are_random_not_always():
    images = _grid_images(1)
    ds, _ = from_arrays(images, [0])
    # resize == crop == image size and crop=False: the only change left is the flip.
    pipeline = train_pipeline(ds, _rule(8, 8), batch_size=1, num_classes=1, crop=False, seed=0,
                              shuffle_buffer=0)
    original = images[0] / np.float32(255)
    mirrored = original[:, ::-1]
    flipped = 0
    for x, _ in pipeline.take(64):
        x = x.numpy()[0]
        is_original, is_mirrored = np.allclose(x, original), np.allclose(x, mirrored)
        assert is_original != is_mirrored
        flipped += is_mirrored
    assert 16 <= flipped <= 48                                 # ~Binomial(64, 1/2), not 0 or 64
    no_flip = train_pipeline(ds, _rule(8, 8), batch_size=1, num_classes=1, crop=False, flip=False, seed=0)
    assert all(np.allclose(x.numpy()[0], original) for x, _ in no_flip.take(16))


def test_crop_positions_vary_and_are_windows():
    images = _grid_images(1)
    ds, _ = from_arrays(images, [0])
    pipeline = train_pipeline(ds, _rule(8, 4), batch_size=1, num_classes=1, flip=False, seed=0, shuffle_buffer=0)
    offsets = set()
    for x, _ in pipeline.take(48):
        values = np.round(x.numpy()[0, ..., 0] * 255).astype(int)
        row, col = divmod(values[0, 0] // 3, 8)
        assert np.array_equal(values, images[0, row:row + 4, col:col + 4, 0])   # a true 4x4 window
        offsets.add((row, col))
    assert len(offsets) >= 8                                   # 25 possible offsets


def test_no_crop_resizes_straight_to_crop():
    ds, _ = from_arrays(_grid_images(2, size=16), [0, 1])
    (images, _), = _batches(train_pipeline(ds, _rule(32, 8), batch_size=2, num_classes=2, crop=False,
                                           flip=False, repeat=False, seed=0))
    assert images.shape == (2, 8, 8, 3)


def test_eval_pipeline_is_deterministic_and_keeps_remainder():
    images = _grid_images(10)
    ds, _ = from_arrays(images, np.arange(10) % 4)
    first = _batches(eval_pipeline(ds, _rule(12, 8), batch_size=4, num_classes=4))
    second = _batches(eval_pipeline(ds, _rule(12, 8), batch_size=4, num_classes=4))
    assert [len(y) for _, y in first] == [4, 4, 2]
    for (x1, y1), (x2, y2) in zip(first, second):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    x = np.concatenate([b[0] for b in first])
    np.testing.assert_allclose(x, images / 255.0, atol=1e-6)   # 8x8 images at crop 8: untouched, in order
    np.testing.assert_array_equal(np.concatenate([b[1] for b in first]), np.eye(4)[np.arange(10) % 4])


def test_mixup_mixes_with_one_lambda_per_batch():
    batch = 8
    images = np.arange(batch, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 3), np.float32)
    labels = np.eye(batch, dtype=np.float32)
    lams = []
    for seed in range(6):
        mixed_images, mixed_labels = (t.numpy() for t in mixup(images, labels, 1.0, [seed, 0]))
        lam, perm = (t.numpy() for t in mixup_params(batch, 1.0, [seed, 0]))
        assert sorted(perm) == list(range(batch))
        expected_labels = lam * labels + (1 - lam) * labels[perm]      # NumPy, one lambda for all rows
        expected_images = lam * images + (1 - lam) * images[perm]
        np.testing.assert_allclose(mixed_labels, expected_labels, atol=1e-6)
        np.testing.assert_allclose(mixed_images, expected_images, atol=1e-5)
        np.testing.assert_allclose(mixed_labels.sum(1), 1.0, atol=1e-6)
        # Every row that was mixed with another carries the same weight on its own class.
        own = np.diag(mixed_labels)[perm != np.arange(batch)]
        np.testing.assert_allclose(own, own[0], atol=1e-6)
        lams.append(float(lam))
    assert len(set(lams)) == 6                                 # a new lambda per batch


def test_mixup_lambda_follows_beta():
    from scipy import stats

    for alpha in (0.1, 1.0):
        lams = np.array([float(mixup_params(4, alpha, [seed, 1])[0]) for seed in range(300)])
        assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def test_pipeline_mixup_matches_numpy():
    """Classes are one per example and images constant per class, so each batch reveals lambda
    and the permutation; both must be the same for images and labels of every row."""
    n = 8
    values = np.arange(n) * 30
    images = np.broadcast_to(values[:, None, None, None], (n, 6, 6, 3)).astype(np.uint8)
    ds, _ = from_arrays(images, np.arange(n))
    pipeline = train_pipeline(ds, _rule(6, 6), batch_size=n, num_classes=n, crop=False, flip=False,
                              mixup_alpha=1.0, seed=3)
    mixed_batches = 0
    for x, y in _batches(pipeline.take(5)):
        np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-6)
        high = np.argmax(y, axis=1)
        weight = y[np.arange(n), high]
        rest = y.copy()
        rest[np.arange(n), high] = 0
        low = np.where(weight > 1 - 1e-6, high, np.argmax(rest, axis=1))   # unmixed rows: own class twice
        mixed = weight < 1 - 1e-6
        np.testing.assert_allclose(weight[mixed], weight[mixed][0] if mixed.any() else 1, atol=1e-6)
        # The batch is one epoch of 8 distinct classes: both sides of the mix are permutations of it.
        assert sorted(high) == list(range(n)) and sorted(low) == list(range(n))
        np.testing.assert_array_equal(np.count_nonzero(y > 1e-6, axis=1), np.where(mixed, 2, 1))
        # Images mixed with exactly the labels' weights, recomputed in NumPy.
        expected = weight * values[high] / 255.0 + (1 - weight) * values[low] / 255.0
        np.testing.assert_allclose(x[..., 0].mean(axis=(1, 2)), expected, atol=1e-5)
        np.testing.assert_allclose(x.std(axis=(1, 2, 3)), 0.0, atol=1e-6)          # still constant images
        mixed_batches += mixed.any() and 1 - weight[mixed][0] > 1e-3
    assert mixed_batches >= 3


def test_mixup_off_when_alpha_zero_and_rule_default():
    ds, _ = from_arrays(_grid_images(8), np.arange(8) % 4)
    for alpha, rule_alpha in ((0.0, 0.1), (None, 0.0)):
        pipeline = train_pipeline(ds, _rule(8, 8, mixup_alpha=rule_alpha), batch_size=8, num_classes=4,
                                  mixup_alpha=alpha, seed=0)
        for _, labels in _batches(pipeline.take(3)):
            assert set(np.unique(labels)) == {0.0, 1.0}
    on = train_pipeline(ds, _rule(8, 8, mixup_alpha=1.0), batch_size=8, num_classes=4, seed=0)
    assert any(not set(np.unique(labels)) <= {0.0, 1.0} for _, labels in _batches(on.take(3)))


def test_label_out_of_range_is_named():
    ds, _ = from_arrays(_grid_images(2), [0, 5])
    with pytest.raises(tf.errors.InvalidArgumentError, match="label out of range for num_classes=3"):
        _batches(eval_pipeline(ds, _rule(8, 8), batch_size=2, num_classes=3))


def test_pipeline_argument_errors():
    ds, _ = from_arrays(_grid_images(4), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="batch_size"):
        train_pipeline(ds, _rule(8, 8), batch_size=0, num_classes=2)
    with pytest.raises(ValueError, match="num_classes"):
        eval_pipeline(ds, _rule(8, 8), batch_size=2, num_classes=0)
    with pytest.raises(ValueError, match="mixup_alpha"):
        train_pipeline(ds, _rule(8, 8), batch_size=2, num_classes=2, mixup_alpha=-1)
    floats = ds.map(lambda x, y: (tf.cast(x, tf.float32), y))
    with pytest.raises(ValueError, match="uint8"):
        eval_pipeline(floats, _rule(8, 8), batch_size=2, num_classes=2)


@pytest.mark.parametrize("command", [
    ["finetune", "--variant", "r14x1", "--output", "{tmp}/run"],
    ["evaluate", "--model", "{tmp}/model.keras", "--resolution", "32"],  # the dataset loads before the model
    ["train", "--variant", "r14x1", "--model-dir", "{tmp}/upstream", "--dry-run"],
])
def test_no_download_fails_at_once_on_an_unprepared_dataset(command, tmp_path, capsys):
    """Offline users get one line naming the fix, not minutes of download retries."""
    from bit_keras.cli import main

    (tmp_path / "model.keras").write_bytes(b"")
    argv = [arg.format(tmp=tmp_path) for arg in command]
    argv += ["--dataset", "tfds:cifar10", "--data-dir", str(tmp_path / "tfds"), "--no-download"]
    assert main._main(main.build_parser().parse_args(argv)) == 2
    assert "tfds:cifar10 is not prepared" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "upstream" / "checkpoints").exists()


def test_train_dry_run_needs_no_dataset(tiny_tfds, tmp_path, capsys):
    """The README's ImageNet dry run: offline it neither downloads nor leaves folders; --train-size fills in."""
    import json

    from bit_keras.cli import main

    def dry_run(*flags):
        argv = ["train", "--variant", "r14x1", "--model-dir", str(tmp_path / "up"), "--dry-run", *flags]
        return main._main(main.build_parser().parse_args(argv))

    empty = ["--dataset", "tfds:cifar10", "--data-dir", str(tmp_path / "tfds")]
    assert dry_run(*empty) == 2
    assert "tfds:cifar10 is not prepared" in capsys.readouterr().err and not (tmp_path / "tfds").exists()
    assert dry_run(*empty, "--train-size", "50000") == 0
    assert json.loads(capsys.readouterr().out)["train_size"] == 50000 and not (tmp_path / "tfds").exists()
    assert dry_run("--dataset", tiny_tfds[0], "--data-dir", tiny_tfds[1], "--split", "train[:50%]") == 0
    assert json.loads(capsys.readouterr().out)["train_size"] == 5
    assert not (tmp_path / "up").exists()


def test_a_cut_short_image_is_left_out_at_load_counted_per_class_and_a_class_that_lost_all_is_refused(tmp_path):
    _two_classes(tmp_path, per_class=3)
    (tmp_path / "bird").mkdir()
    for i in range(2):
        _write_png(tmp_path / "bird" / f"{i}.png", np.full((10, 12, 3), 7 * i, np.uint8))
    cut = (tmp_path / "dog" / "0.png").read_bytes()
    (tmp_path / "dog" / "0.png").write_bytes(cut[: len(cut) - 20])   # valid PNG magic, truncated body
    jpeg = tf.io.encode_jpeg(np.full((16, 16, 3), 9, np.uint8)).numpy()
    (tmp_path / "cat" / "tail.jpg").write_bytes(jpeg + b"\0" * 10)    # trailing bytes after a whole JPEG: kept
    ds, info = load_source(f"folder:{tmp_path}")
    assert [(f.rsplit("/", 2)[-2:], why) for f, why in info.skipped] == [
        (["dog", "0.png"], "cut short or damaged: it does not decode")]
    assert info.train_size == 8 and len(list(ds)) == 8   # the true count
    assert info.lost_by_class == (("dog", 1, 3),)
    for i in range(2):
        data = (tmp_path / "bird" / f"{i}.png").read_bytes()
        (tmp_path / "bird" / f"{i}.png").write_bytes(data[:30])
    with pytest.raises(ValueError, match=r"no readable image left: 'bird' \(all 2 files\); e\.g\. .*bird/0\.png"):
        load_source(f"folder:{tmp_path}")
