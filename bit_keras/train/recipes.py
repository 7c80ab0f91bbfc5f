"""Training-strategy options of `bit_keras train` and the named recipes that set several at once.

Pure Python, no TensorFlow: the CLI's `--dry-run` resolves them. Every option is off by
default, so a plain `bit_keras train` is the BiT recipe; `--recipe resnet-rs` sets the
combination of "Revisiting ResNets: Improved Training and Scaling Strategies" (Bello et
al., 2021), and an explicit flag overrides any value a recipe sets.

ResNet-RS values chosen here (paper, Sections 3-4 and its appendix table of per-model
settings; the size-dependent ones are given for the models of BiT's R50-R101 size):
  label smoothing 0.1; EMA of the weights with decay 0.9999; weight decay 4e-5 (an L2 term,
  as the paper's TPU ResNet code and this trainer apply it); cosine learning-rate decay;
  350 epochs; RandAugment with 2 layers at magnitude 10 (the paper uses 10 for the smaller
  models and raises it to 15 for the larger ones / larger images); dropout 0.25 before the
  head (the paper's rate for most models, 0.4 only for the largest); stochastic depth 0.0
  (the paper adds 0.1-0.2 only for its deepest / largest-image models).
Not set by the recipe: the batch, base learning rate and warm-up (the schedule's values
stay), nor the paper's architecture changes (squeeze-excitation, ResNet-D stem,
BatchNorm): pass `--norm batch` for the last, the others are not in this network.
"""

from __future__ import annotations

import dataclasses
import math

from bit_keras.errors import ConfigError

NORMALIZATIONS = ("group", "batch", "none")


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """The regularisation and network switches of one upstream run (all off: the BiT recipe)."""

    label_smoothing: float = 0.0
    dropout: float = 0.0               # before the head
    stochastic_depth: float = 0.0      # drop-path rate of the last unit (linear over units)
    ema: float | None = None           # EMA decay of the weights; None: off
    randaugment: tuple | None = None   # (layers N, magnitude M); None: off
    normalization: str = "group"
    weight_standardization: bool = True
    groups: int = 32
    sync_batch_norm: bool = False

    def __post_init__(self):
        for name in ("label_smoothing", "dropout", "stochastic_depth"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value < 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1). Received: {value}")
        if self.ema is not None and not (math.isfinite(self.ema) and 0 < self.ema < 1):
            raise ConfigError(f"--ema takes the EMA decay, in (0, 1), e.g. 0.9999. Received: {self.ema}")
        if self.randaugment is not None:
            layers, magnitude = self.randaugment
            if int(layers) != layers or layers < 1 or not 0 <= magnitude <= 30:
                raise ConfigError(f"--randaugment N,M needs N >= 1 layers and a magnitude M in [0, 30]. "
                                  f"Received: {layers},{magnitude}")
            object.__setattr__(self, "randaugment", (int(layers), float(magnitude)))
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"--norm must be group, batch or none. Received: {self.normalization!r}")
        if int(self.groups) < 1:
            raise ConfigError(f"--groups must be >= 1. Received: {self.groups}")
        if self.normalization != "group" and int(self.groups) != 32:
            raise ConfigError(f"--groups applies only to --norm group. Received: --groups {self.groups} with "
                              f"--norm {self.normalization}")
        if self.sync_batch_norm and self.normalization != "batch":
            raise ConfigError("--sync-bn synchronises BatchNorm statistics: it needs --norm batch.")

    def replace(self, **changes) -> "TrainingOptions":
        """A copy with the given fields changed (None values are ignored: unset CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        record["randaugment"] = list(self.randaugment) if self.randaugment else None
        return record

    def backbone_kwargs(self) -> dict:
        """What BiTBackbone takes of these options."""
        return {"normalization": self.normalization, "weight_standardization": self.weight_standardization,
                "groups": int(self.groups), "stochastic_depth": self.stochastic_depth,
                "sync_batch_norm": self.sync_batch_norm}

    def describe(self) -> str:
        """One log line: what is switched on."""
        parts = [f"{self.normalization} norm" + (f" ({self.groups} groups)" if self.normalization == "group" else "")
                 + (" + WS" if self.weight_standardization else ", no WS")
                 + (", synchronised" if self.sync_batch_norm else "")]
        for name, value in (("label smoothing", self.label_smoothing), ("dropout", self.dropout),
                            ("stochastic depth", self.stochastic_depth)):
            if value:
                parts.append(f"{name} {value:g}")
        if self.ema is not None:
            parts.append(f"EMA {self.ema:g} (evaluated and exported)")
        if self.randaugment:
            parts.append(f"RandAugment {self.randaugment[0]} layers, magnitude {self.randaugment[1]:g}")
        return "; ".join(parts)


# name -> (schedule field changes, option changes)
RECIPES = {
    "resnet-rs": (
        {"weight_decay": 4e-5, "epochs": 350.0, "lr_schedule": "cosine"},
        {"label_smoothing": 0.1, "dropout": 0.25, "stochastic_depth": 0.0, "ema": 0.9999, "randaugment": (2, 10.0)},
    ),
}


def resolve_recipe(name):
    """(schedule changes, option changes) of a recipe; None or "bit": nothing changes."""
    key = str(name or "bit").strip().lower().replace("_", "-")
    if key in ("bit", "none"):
        return {}, {}
    if key not in RECIPES:
        raise ConfigError(f"Unknown recipe {name!r}; choose bit (the default) or {', '.join(RECIPES)}.")
    schedule, options = RECIPES[key]
    return dict(schedule), dict(options)


def parse_randaugment(text):
    """'N,M' -> (N layers, magnitude M); 'none' or 'off' -> None."""
    if text is None:
        return None
    if str(text).strip().lower() in ("none", "off"):
        return None
    parts = str(text).replace(" ", "").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        layers, magnitude = int(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"--randaugment takes N,M: N layers and magnitude M, e.g. 2,10. Received: {text!r}") from None
    return layers, magnitude
