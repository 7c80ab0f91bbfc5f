"""Reads TensorBoard event files back with TensorFlow alone, for tests of the logs runs leave."""

from bit_keras.summaries import read_scalars  # noqa: F401  (the runs' own reader, used for their pictures)
