"""ONNX translation of the ExportedProgram, with MSDA as a plugin node or as standard ops.

The plugin node forms are specified in :mod:`codetr.contract.plugin`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import onnx
import torch
from torch.export import ExportedProgram

from codetr.atomic import atomic_path
from codetr.contract import plugin as contract
from codetr.contract.artifacts import MsdaMode
from codetr.contract.io import INPUT_NAMES, OUTPUT_NAMES
from codetr.contract.onnx_graph import clamp_ir_version, default_opset
from codetr.export.nvidia_plugin import replace_with_nvidia_plugin
from codetr.export.options import ExportOptions
from codetr.quantization.onnx_qdq import qdq_translations
from codetr.export.postprocess import name_detection_dims, onnx_translations


@functools.cache
def _codetr_opset():
    # Imported here: onnxscript is needed only to write ONNX, not to import codetr.export.
    import onnxscript

    contract.register_codetr_msda_schema()
    return onnxscript.values.Opset(contract.CODETR_DOMAIN, contract.CODETR_DOMAIN_VERSION)


def _msda_plugin_node(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                      im2col_step: int = contract.DEFAULT_IM2COL_STEP):
    """Translation of ``torch.ops.codetr.msda`` into the one plugin node of the contract."""
    return _codetr_opset().CodetrMSDA(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        im2col_step=im2col_step,
        plugin_version=contract.CODETR_PLUGIN_VERSION,
        plugin_namespace=contract.CODETR_PLUGIN_NAMESPACE,
    )


def to_onnx(program: ExportedProgram, options: ExportOptions) -> onnx.ModelProto:
    """Translate ``program`` to a checked ONNX model in the options' MSDA form and opset
    (``options.onnx_opset``; RuntimeError if the exporter wrote another one).

    Dynamic image sides become the symbolic dimensions ``height`` and ``width`` of ``images``.
    """
    translations = {} if options.msda is MsdaMode.DECOMPOSED else {torch.ops.codetr.msda.default: _msda_plugin_node}
    translations.update(qdq_translations(options.onnx_opset))  # INT8 Q/DQ nodes, if the program has any
    translations.update(onnx_translations())
    onnx_program = torch.onnx.export(
        program,
        dynamo=True,
        opset_version=options.onnx_opset,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        custom_translation_table=translations,
        optimize=True,
        verbose=False,
    )
    model = onnx_program.model_proto
    _name_dynamic_dims(model)
    name_detection_dims(model)
    if options.msda is MsdaMode.NVIDIA:
        model = replace_with_nvidia_plugin(model)
    clamp_ir_version(model)
    written = default_opset(model)
    if written != options.onnx_opset:
        raise RuntimeError(f"torch.onnx wrote opset {written} instead of the requested {options.onnx_opset}")
    onnx.checker.check_model(model, full_check=True)
    return model


def _name_dynamic_dims(model: onnx.ModelProto) -> None:
    """Give the images input's symbolic sides readable names wherever they appear as-is."""
    images = next(value for value in model.graph.input if value.name == INPUT_NAMES[0])
    renames = {}
    for axis, name in ((2, "height"), (3, "width")):
        dim = images.type.tensor_type.shape.dim[axis]
        if dim.dim_param:
            renames[dim.dim_param] = name
    if not renames:
        return
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model`` as one self-contained file, atomically."""
    with atomic_path(path) as temporary:
        onnx.save_model(model, temporary)
