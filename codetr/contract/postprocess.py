"""Post-processing inside an exported graph (``codetr export --postprocess``): the modes and the
shape of their outputs, shared by the exporter and the runtimes.

``none`` (default): the graph ends at the model's score top-k; outputs ``boxes`` [B, K, 4],
``scores`` [B, K], ``labels`` [B, K] with K = ``max_per_img``; the host applies the config's
threshold and (soft-)NMS (:mod:`codetr.postprocess`).

``threshold``: the graph keeps the detections whose score is above the export's score threshold
(ONNX ``NonZero``); ``nms``: it also runs hard class-wise NMS at the config's IoU threshold (ONNX
``NonMaxSuppression``, which TensorRT's parser maps to an ``INMSLayer``). Co-DINO's official
test config uses soft-NMS, which has no ONNX or TensorRT layer: hard NMS is the closest form that
stays in the engine, and it removes boxes soft-NMS would keep with a decayed score.

Both have a data-dependent number of detections N, so they are exported with batch size 1 and
keep the batch axis: ``boxes`` [1, N, 4] float32, ``scores`` [1, N] float32 descending,
``labels`` [1, N] int64 -- the same :class:`~codetr.models.Detections` every runtime returns,
with N named ``num_detections`` in ``metadata.json``. Boxes are in network-input pixels, like
the top-k outputs; the host still rescales and clamps them to the original image.
"""

from __future__ import annotations

import enum

POSTPROCESS_KEY = "postprocess"
"""metadata.json key of the in-graph post-processing: {mode, score_threshold, iou_threshold,
max_detections, note} (absent in exports written before it existed: mode none)."""
NUM_DETECTIONS = "num_detections"
"""Name of the data-dependent dimension of the outputs of a ``threshold``/``nms`` export."""


class PostprocessMode(str, enum.Enum):
    """What the exported graph does after the score top-k (see the module docstring)."""

    NONE = "none"
    THRESHOLD = "threshold"
    NMS = "nms"

    @property
    def is_data_dependent(self) -> bool:
        """Whether the outputs' detection count is known only after a run."""
        return self is not PostprocessMode.NONE
