"""The upstream input pipeline: Inception crop, targets, and a stream that resumes exactly."""

import numpy as np
import pytest
import tensorflow as tf

from bit_keras.train.input import example_stream, inception_crop, targets, upstream_dataset

N = 12


@pytest.fixture(autouse=True)
def _no_global_tf_seed():
    # Per-epoch shuffle seeds are tensors, which tf.data refuses while the global seed is 0.
    tf.random.set_seed(None)


def _source():
    images = np.arange(N, dtype=np.uint8)[:, None, None, None] * np.ones((1, 20, 24, 3), np.uint8) * 20
    return tf.data.Dataset.from_tensor_slices((images, np.arange(N, dtype=np.int64)))


def test_inception_crop_of_a_flat_image_is_that_colour_at_the_requested_size():
    image = np.full((30, 50, 3), 200, np.uint8)
    for seed in range(5):
        crop = inception_crop(tf.constant(image), 16, tf.constant([seed, 7], tf.int64)).numpy()
        assert crop.shape == (16, 16, 3)
        np.testing.assert_allclose(crop, 200 / 255, atol=1e-6)


def test_inception_crop_area_stays_in_range():
    # A horizontal ramp: the crop's mean column value tells where and how wide the crop was.
    ramp = np.repeat(np.repeat(np.arange(100, dtype=np.uint8)[None, :, None], 100, 0), 3, 2)
    widths = []
    for seed in range(20):
        crop = inception_crop(tf.constant(ramp), 8, tf.constant([seed, 1], tf.int64)).numpy()[..., 0] * 255
        widths.append(crop.max() - crop.min())
    assert min(widths) > 0 and max(widths) <= 100 and len(set(np.round(widths))) > 5


def test_targets_one_hot_and_multi_hot():
    np.testing.assert_array_equal(targets(tf.constant(2, tf.int64), 4), [0, 0, 1, 0])
    np.testing.assert_array_equal(targets(tf.constant([3, 0, -1, 3], tf.int64), 5), [1, 0, 0, 1, 0])


def test_every_epoch_is_a_new_permutation_of_the_source():
    labels = [int(l) for _, _, l in example_stream(_source(), train_size=N, seed=3, shuffle_buffer=N).take(3 * N)]
    epochs = [labels[i * N:(i + 1) * N] for i in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(N))
    assert epochs[0] != epochs[1] != epochs[2]


@pytest.mark.parametrize("start_batch", [1, 4, 7])
def test_a_restart_sees_exactly_the_batches_the_interrupted_run_would_have(start_batch):
    kwargs = dict(num_classes=N, train_size=N, image_size=8, batch_size=5, seed=11, shuffle_buffer=6)
    full = list(upstream_dataset(_source(), **kwargs).take(start_batch + 2))
    resumed = list(upstream_dataset(_source(), start_example=start_batch * 5, **kwargs).take(2))
    for (images, labels), (images2, labels2) in zip(full[start_batch:], resumed):
        np.testing.assert_array_equal(images.numpy(), images2.numpy())
        np.testing.assert_array_equal(labels.numpy(), labels2.numpy())
    assert full[0][0].shape == (5, 8, 8, 3) and full[0][1].shape == (5, N)


def test_input_pipelines_of_several_hosts_split_the_stream():
    kwargs = dict(num_classes=N, train_size=N, image_size=8, batch_size=3, seed=0, shuffle_buffer=N)
    whole = np.concatenate([l.numpy().argmax(1) for _, l in upstream_dataset(_source(), **kwargs).take(4)])
    hosts = [np.concatenate([l.numpy().argmax(1) for _, l in upstream_dataset(
        _source(), input_context=tf.distribute.InputContext(2, pipeline, 2), **kwargs).take(2)])
        for pipeline in (0, 1)]
    np.testing.assert_array_equal(np.sort(np.concatenate(hosts)), np.sort(whole))
    np.testing.assert_array_equal(hosts[0], whole[0::2])
