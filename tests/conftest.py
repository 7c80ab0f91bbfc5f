"""Shared test setup: quiet TensorFlow logs and keep each test's files under tmp_path."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("BIT_KERAS_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), "bit_keras_test_cache_unused"))
