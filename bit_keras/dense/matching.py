"""Anchor matching for RetinaNet that also gives every object its best anchor.

keras-hub's label encoder matches an anchor to an object only at IoU >= 0.5, so a small,
thin or off-grid object can be no anchor's target and is never learned. Its own
`force_match_for_each_col` switch fixes that but indexes past the last object whenever a
batch has no padding row (it argmaxes a similarity matrix with one extra all -1 column),
and it also "matches" padding rows (all -1 boxes, IoU 0 everywhere) to anchor 0. This
matcher does the IoU matching as keras-hub does, then forces only real objects (IoU > 0
with some anchor) onto their best anchor, as torchvision's `allow_low_quality_matches`.
"""

from __future__ import annotations

from keras import ops
from keras_hub.src.layers.modeling.box_matcher import BoxMatcher


class BestAnchorMatcher(BoxMatcher):
    """`BoxMatcher` by thresholds, then each object with any overlap forced onto its best anchor."""

    def __init__(self, thresholds, match_values, **kwargs):
        kwargs.pop("force_match_for_each_col", None)
        super().__init__(list(thresholds), list(match_values), force_match_for_each_col=False, **kwargs)

    def call(self, similarity_matrix):
        columns, values = super().call(similarity_matrix)
        if similarity_matrix.shape[-1] == 0:
            return columns, values
        unbatched = len(similarity_matrix.shape) == 2
        similarity = similarity_matrix[None] if unbatched else similarity_matrix
        if unbatched:
            columns, values = columns[None], values[None]
        rows = ops.shape(similarity)[1]
        best_anchor = ops.argmax(similarity, axis=1)                           # [B, objects]
        overlaps = ops.cast(ops.max(similarity, axis=1) > 0, similarity.dtype)  # padding rows: 0
        mapping = ops.one_hot(best_anchor, rows, dtype=similarity.dtype) * overlaps[..., None]  # [B, objects, anchors]
        forced = ops.max(mapping, axis=1) > 0                                   # [B, anchors]
        columns = ops.where(forced, ops.cast(ops.argmax(mapping, axis=1), columns.dtype), columns)
        values = ops.where(forced, ops.cast(self.match_values[-1], values.dtype), values)
        return (columns[0], values[0]) if unbatched else (columns, values)


def match_every_object(label_encoder):
    """Swap `label_encoder`'s box matcher for a `BestAnchorMatcher` with the same thresholds."""
    matcher = label_encoder.box_matcher
    label_encoder.box_matcher = BestAnchorMatcher(matcher.thresholds[1:-1], matcher.match_values)
    return label_encoder
