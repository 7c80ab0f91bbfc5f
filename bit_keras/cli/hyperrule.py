"""`bit_keras hyperrule`: print the fine-tuning recipe BiT-HyperRule picks for a dataset."""

from __future__ import annotations

import json
import re

from bit_keras.cli.common import add_batch_flag
from bit_keras.errors import ConfigError
from bit_keras.hyperrule import SCHEDULE_SOURCES


def register(subparsers):
    parser = subparsers.add_parser(
        "hyperrule", help="Print the BiT-HyperRule (resolution, schedule, learning rate, MixUp) for a dataset.")
    parser.add_argument("--train-size", type=int, required=True, help="Number of training examples.")
    parser.add_argument("--image-size", required=True, help="Typical image size as HxW (e.g. 32x32) or one number.")
    parser.add_argument("--variant", default=None,
                        help="The model to fine-tune (any name `bit_keras list` knows, or an architecture): "
                             "its releases' resolution for large images (R152x4: 512 -> 480).")
    add_batch_flag(parser, default_text="default 512")
    parser.add_argument("--public-code-resolution", action="store_true",
                        help="Use the public code's 512 -> 480 for every model.")
    parser.add_argument("--schedule", choices=SCHEDULE_SOURCES, default="paper",
                        help="Decay boundaries: the paper's 30/60/90%% (default) or the public code's.")
    parser.add_argument("--json", action="store_true", help="Print JSON.")
    parser.add_argument("--plot", metavar="FILE", default=None,
                        help="Also draw the learning rate against updates, warm-up end and decays marked "
                             "(.png, .svg or .pdf).")
    parser.set_defaults(handler=show_rule)


def parse_image_size(text: str):
    """'32x32', '32X48', '32,48' or '32' -> (height, width)."""
    numbers = re.split(r"[xX,*]", text.strip())
    if len(numbers) == 1:
        numbers = numbers * 2
    if len(numbers) != 2 or not all(n.strip().isdigit() and int(n) > 0 for n in numbers):
        raise ConfigError(f"--image-size must be HxW with positive integers, e.g. 224x224. Received: {text!r}")
    return int(numbers[0]), int(numbers[1])


def show_rule(args):
    from bit_keras import presets
    from bit_keras.hyperrule import DEFAULT_LARGE_RESOLUTION, hyperrule

    large = presets.hyperrule_resolution(presets.resolve(args.variant)[0]) if args.variant else DEFAULT_LARGE_RESOLUTION
    rule = hyperrule(args.train_size, parse_image_size(args.image_size), large_resolution=large,
                     batch_size=args.batch, public_code_resolution=args.public_code_resolution,
                     schedule=args.schedule)
    steps = rule.boundary_learning_rates()
    if args.plot:
        from bit_keras import plots

        plots.schedule(rule, args.plot)
    if args.json:
        report = rule.to_dict()
        report["learning_rate_at"] = [{"step": step, "learning_rate": lr} for step, lr in steps]
        print(json.dumps(report, indent=2))
        return 0
    height, width = rule.image_size
    print(f"BiT-HyperRule for {rule.train_size} training images of {height}x{width}, batch {rule.batch_size}"
          f"{f', {args.variant}' if args.variant else ''}:")
    print(f"  resolution     resize to {rule.resize}x{rule.resize}, random crop {rule.crop}x{rule.crop} "
          f"(evaluation: resize to {rule.crop}x{rule.crop})")
    print(f"  steps          {rule.total_steps} ({rule.schedule} schedule), warm-up {rule.warmup_steps}, "
          f"decay x0.1 at {', '.join(str(b) for b in rule.decay_boundaries)}")
    print(f"  optimizer      SGD, learning rate {rule.base_learning_rate:g}, momentum {rule.momentum}, "
          f"weight decay {rule.weight_decay:g}")
    print(f"  mixup          {f'alpha {rule.mixup_alpha:g}' if rule.mixup_alpha else 'off'}")
    print("  learning rate  " + "; ".join(f"step {step}: {lr:.3g}" for step, lr in steps))
    if args.plot:
        print(f"  picture        {args.plot}")
    return 0
