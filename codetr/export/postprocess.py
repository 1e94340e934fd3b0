"""Post-processing traced into the exported graph (``codetr export --postprocess``).

:class:`InGraphPostprocess` wraps a Co-DINO model at export time only: after the model's score
top-k it keeps the detections above a score threshold and, in ``nms`` mode, suppresses
overlapping boxes of the same class (hard NMS). Both are one ``torch.ops.codetr.select_detections``
node (:mod:`codetr.ops.select`), written by :func:`onnx_translations` as one ONNX
``NonMaxSuppression`` with a bounded ``max_output_boxes_per_class`` (TensorRT's INMSLayer takes
an int32 count; torch.onnx's own NMS translation passes INT64_MAX). The output layout is
specified in :mod:`codetr.contract.postprocess`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx
import torch

import codetr.ops  # noqa: F401  registers torch.ops.codetr.select_detections
from codetr.config import Config
from codetr.contract.postprocess import NUM_DETECTIONS, PostprocessMode

NO_SUPPRESSION = 1.0
"""IoU threshold that suppresses nothing (IoU never exceeds 1): threshold mode's NMS node."""
HARD_NMS_NOTE = (
    "hard class-wise NMS (ONNX NonMaxSuppression, TensorRT INMSLayer) at the config's IoU threshold: the "
    "closest in-engine form of the config's host NMS ({kind}); it removes overlapping boxes that soft-NMS would keep "
    "with a decayed score, so AP can differ from the host soft-NMS"
)


def score_threshold_for(mode: PostprocessMode, given: float | None, config: Config) -> float:
    """The in-graph score threshold: ``given`` (``--score-threshold``), else the config's test
    score_threshold; ValueError when one is given for mode NONE, where nothing would use it."""
    if not mode.is_data_dependent:
        if given is not None:
            raise ValueError("--score-threshold applies to --postprocess threshold or nms; the host applies "
                             "the config's threshold otherwise (codetr infer --score-threshold)")
        return 0.0
    return config.test.score_threshold if given is None else given


def class_wise_offsets(boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """boxes [K, 4] shifted by ``label * (max coordinate + 1)``, so that boxes of different labels
    never overlap and one class-agnostic NMS acts class by class (torchvision ``batched_nms``'s
    coordinate trick)."""
    return boxes + (labels.to(boxes.dtype) * (boxes.max() + 1))[:, None]


class InGraphPostprocess(torch.nn.Module):
    """``model`` followed by the in-graph post-processing of ``mode`` (THRESHOLD or NMS).

    Input: what ``CoDINO.forward`` takes, batch size 1. Output: (boxes [1, N, 4], scores [1, N],
    labels [1, N]) with scores > ``score_threshold``, after class-wise hard NMS at
    ``iou_threshold`` in NMS mode; N is data-dependent.
    """

    def __init__(self, model: torch.nn.Module, mode: PostprocessMode, score_threshold: float, iou_threshold: float) -> None:
        super().__init__()
        if not mode.is_data_dependent:
            raise ValueError(f"InGraphPostprocess needs mode threshold or nms, got {mode.value}")
        self.model = model
        self.mode = mode
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, scores, labels = self.model(images, image_sizes)
        boxes, scores, labels = boxes[0], scores[0], labels[0]
        iou_threshold = self.iou_threshold if self.mode is PostprocessMode.NMS else NO_SUPPRESSION
        keep = torch.ops.codetr.select_detections(
            class_wise_offsets(boxes.float(), labels), scores.float(), iou_threshold, self.score_threshold
        )
        return boxes[keep][None], scores[keep][None], labels[keep][None]


def wrap_for_export(model: torch.nn.Module, mode: PostprocessMode, score_threshold: float, iou_threshold: float) -> torch.nn.Module:
    """``model`` itself for mode NONE, else wrapped in :class:`InGraphPostprocess`."""
    if not mode.is_data_dependent:
        return model
    return InGraphPostprocess(model, mode, score_threshold, iou_threshold)


def onnx_translations() -> dict[Callable, Callable]:
    """custom_translation_table entry writing ``codetr::select_detections`` as one ONNX
    NonMaxSuppression whose ``max_output_boxes_per_class`` is the (static) number of boxes."""
    import onnxscript
    from onnxscript import opset18 as op

    def constant(value, dtype):
        return op.Constant(value=onnxscript.ir.tensor([value], dtype=dtype))

    def select_detections(boxes, scores, iou_threshold: float, score_threshold: float):
        max_detections = boxes.shape[0]
        if not isinstance(max_detections, int):
            raise ValueError(f"select_detections needs a static number of boxes, got {boxes.shape}")
        # NonMaxSuppression takes boxes [batch, K, 4] and scores [batch, classes, K]; its output
        # rows are (batch index, class index, box index), in descending score order.
        selected = op.NonMaxSuppression(
            op.Unsqueeze(boxes, [0]),
            op.Unsqueeze(scores, [0, 1]),
            constant(max_detections, onnxscript.ir.DataType.INT64),
            constant(iou_threshold, onnxscript.ir.DataType.FLOAT),
            constant(score_threshold, onnxscript.ir.DataType.FLOAT),
        )
        return op.Reshape(op.Slice(selected, [2], [3], [1]), [-1])

    return {torch.ops.codetr.select_detections.default: select_detections}


def name_detection_dims(model: onnx.ModelProto) -> None:
    """Name the outputs' data-dependent dimension :data:`NUM_DETECTIONS` (in place)."""
    symbols = {
        dim.dim_param for value in model.graph.output for dim in value.type.tensor_type.shape.dim
        if dim.dim_param and dim.dim_param not in ("height", "width")
    }
    for value in [*model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in symbols:
                dim.dim_param = NUM_DETECTIONS


def output_dim(size) -> int | str:
    """A dimension of an exported output for metadata.json: its size, or :data:`NUM_DETECTIONS`
    for the data-dependent count."""
    return int(size) if isinstance(size, int) else NUM_DETECTIONS


def host_postprocessing(config: Config, mode: PostprocessMode, score_threshold: float) -> dict[str, object]:
    """The ``postprocessing`` (TestConfig) the host still applies after the graph's: the graph's
    threshold is kept (the larger of both), and after in-graph NMS no host NMS runs again."""
    test = dataclasses.asdict(config.test)
    if mode.is_data_dependent:
        test["score_threshold"] = max(config.test.score_threshold, score_threshold)
    if mode is PostprocessMode.NMS:
        test["nms"]["kind"] = "none"
    return test


def postprocess_metadata(config: Config, mode: PostprocessMode, score_threshold: float) -> dict[str, object]:
    """The ``postprocess`` entry of metadata.json (see :data:`codetr.contract.postprocess.POSTPROCESS_KEY`)."""
    note = {
        PostprocessMode.NONE: "the graph ends at the score top-k; the host applies 'postprocessing'",
        PostprocessMode.THRESHOLD: f"the graph keeps scores > score_threshold; {NUM_DETECTIONS} is data-dependent",
        PostprocessMode.NMS: HARD_NMS_NOTE.format(kind=config.test.nms.kind)
        + f"; the same NonMaxSuppression node keeps scores > score_threshold; {NUM_DETECTIONS} is data-dependent",
    }[mode]
    return {
        "mode": mode.value,
        "score_threshold": score_threshold if mode.is_data_dependent else None,
        "iou_threshold": config.test.nms.iou_threshold if mode is PostprocessMode.NMS else None,
        "max_detections": config.model.max_per_img,
        "note": note,
    }
