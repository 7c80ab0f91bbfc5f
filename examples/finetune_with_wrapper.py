"""Fine-tune BiT with the HyperRule wrapper: one call gives the compiled model, the rule and the input pipelines.

    python examples/finetune_with_wrapper.py        # offline: r14x1 from random weights on digits, ~1 minute
    python examples/finetune_with_wrapper.py --source exports/m-r50x1 --dataset tfds:oxford_flowers102 \
        --eval-split validation --batch 512 --micro-batch 64

`--source` is a directory written by `bit_keras export`, or a variant name with `--weights`.
"""

import argparse
import os

from bit_keras import weights as weights_rule
from bit_keras.data import load_source
from bit_keras.finetune import build_finetuner


def choose_weights(source, weights=None):
    """(what to build from, whether its weights are random): the library's weights rule decides for a
    model name (a release name downloads its checkpoint once); an existing path is an export."""
    if os.path.exists(source):
        return source, False
    choice = weights_rule.resolve(source, weights)
    return choice, choice.random


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=None, help="Export directory or variant name (default: a random r14x1).")
    parser.add_argument("--weights", default=None, help="A .npz path, a URL or a release name instead of the weights the model name means.")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--eval-split", default="test")
    parser.add_argument("--batch", type=int, default=64, help="Effective batch (the HyperRule scales lr and steps).")
    parser.add_argument("--micro-batch", type=int, default=None, help="Accumulate gradients over smaller batches.")
    parser.add_argument("--steps", type=int, default=100, help="Shorten the schedule (omit with 0: the full rule).")
    parser.add_argument("--resolution", type=int, default=32, help="Crop size (0: the HyperRule's).")
    args = parser.parse_args()

    train, info = load_source(args.dataset, "train")
    test, _ = load_source(args.dataset, args.eval_split)
    source, random_weights = choose_weights(args.source or "r14x1", args.weights)  # default: random r14x1

    ft = build_finetuner(
        source, weights=args.weights if isinstance(source, str) else None,  # a WeightsChoice holds its weights
        num_classes=info.num_classes, train_size=info.train_size,
        image_size=info.image_size, batch_size=args.batch, micro_batch_size=args.micro_batch,
        steps=args.steps or None, resolution=args.resolution or None,
        # The HyperRule's 0.003 x batch/512 is tuned for BiT features; random weights need more.
        base_learning_rate=0.01 if random_weights else None)
    print(ft.rule.to_json())

    # The same as ft.model.fit(ft.train_dataset(train), steps_per_epoch=..., epochs=...), with the
    # epoch length and the stop at rule.total_steps updates worked out from the rule.
    ft.fit(train, validation_data=ft.eval_dataset(test), eval_every=max(1, ft.rule.total_steps // 4), verbose=2)
    scores = ft.model.evaluate(ft.eval_dataset(test), return_dict=True, verbose=0)
    print(f"{args.dataset} {args.eval_split} accuracy: {scores['accuracy']:.3f} (chance {1 / info.num_classes:.3f})")


if __name__ == "__main__":
    main()
