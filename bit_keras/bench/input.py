"""The fine-tuning input pipeline's supply (images/s per core) next to the model's consumption."""

from __future__ import annotations

import dataclasses
import tempfile
import time

from bit_keras.bench.jpegs import make_jpegs
from bit_keras.bench.machine import cpu_name, usable_cores
from bit_keras.bench.steps import Config
from bit_keras.bench.throughput import compare

GPU_TRAINING_IMAGES_PER_SECOND = 2000  # timm's resnetv2_50x1_bit training on an H100 (issue 15's anchor)


def input_throughput(path: str, *, crop: int, batch: int, threads=None, batches: int = 8, warmup: int = 2,
                     mixup_alpha: float = 0.1) -> dict:
    """Images/s of bit_keras's training pipeline on `folder:path`: decode, resize, random crop,
    flip and MixUp (`bit_keras.data.load_source` + `train_pipeline`, the fine-tuning input).

    `threads`: tf.data's private thread pool size (1: one core's supply); None: all cores.
    """
    import tensorflow as tf

    from bit_keras import hyperrule
    from bit_keras.data import load_source, train_pipeline

    ds, info = load_source(f"folder:{path}")
    rule = hyperrule.at_resolution(hyperrule.hyperrule(info.train_size, info.image_size, batch_size=batch), crop)
    pipeline = train_pipeline(ds, rule, batch_size=batch, num_classes=info.num_classes, mixup_alpha=mixup_alpha,
                              seed=0, shuffle_buffer=info.train_size)
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
        pipeline = pipeline.with_options(options)
    iterator = iter(pipeline)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        images, _labels = next(iterator)
    seconds = time.perf_counter() - start
    return {"threads": threads or usable_cores(),
            "images_per_second": batches * batch / seconds, "batches": batches, "batch": batch,
            "resize": rule.resize, "crop": rule.crop, "mixup_alpha": mixup_alpha,
            "output_shape": list(images.shape), "source_images": info.train_size,
            "source_image_size": list(info.image_size)}


def input_report(config: Config, *, steps: int = 3, batches: int = 8, images: int = 64,
                 image_size=(375, 500), gpu_images_per_second: float = GPU_TRAINING_IMAGES_PER_SECOND) -> dict:
    """The fine-tuning pipeline's supply (one core, all cores) next to the model's consumption.

    JPEGs are written to a temporary folder first. The consumption is a fine-tuning step of
    `config` (mode train) timed like `compare` does; the supply is measured after it, alone.
    """
    import math

    cores = usable_cores()
    with tempfile.TemporaryDirectory(prefix="bit_keras_input_") as directory:
        make_jpegs(directory, count=images, image_size=image_size)
        one = input_throughput(directory, crop=config.size, batch=config.batch, threads=1, batches=batches)
        every = input_throughput(directory, crop=config.size, batch=config.batch, batches=batches)
    model = compare([dataclasses.replace(config, mode="train")], steps=steps)["results"][0]
    per_core = one["images_per_second"]
    consumption = model["images_per_second"]
    return {
        "machine": cpu_name(), "cores": cores, "jpeg_size": list(image_size), "jpegs": images,
        "pipeline_one_core": one, "pipeline_all_cores": every,
        "pipeline_images_per_second_per_core": per_core,
        "model": model, "model_images_per_second": consumption,
        "supply_over_consumption": every["images_per_second"] / consumption,
        "cores_per_model": consumption / per_core,
        "gpu_images_per_second": gpu_images_per_second,
        "cores_for_gpu": math.ceil(gpu_images_per_second / per_core),
    }


def format_input_report(report: dict) -> list:
    one, every, model = report["pipeline_one_core"], report["pipeline_all_cores"], report["model"]
    starved = "the model would wait for its input" if report["supply_over_consumption"] < 1 else "the model is not starved"
    return [
        f"input: {report['jpegs']} JPEGs of {report['jpeg_size'][1]}x{report['jpeg_size'][0]} -> decode, resize "
        f"{one['resize']}, random crop {one['crop']}, flip, MixUp {one['mixup_alpha']} (bit_keras.data.train_pipeline), "
        f"batch {one['batch']}",
        f"pipeline supply: {one['images_per_second']:.1f} images/s on 1 core, "
        f"{every['images_per_second']:.1f} images/s on {every['threads']} cores",
        f"model consumption ({model['variant']} fine-tuning, {model['precision']}, {model['size']}px, batch "
        f"{model['batch']}): {model['images_per_second']:.2f} images/s = "
        f"{report['cores_per_model']:.3f} cores of input work",
        f"supply / consumption: {report['supply_over_consumption']:.1f}x: {starved}",
        f"a GPU training at {report['gpu_images_per_second']:.0f} images/s needs about {report['cores_for_gpu']} "
        f"such cores for this pipeline",
    ]
