"""Intermediate tensors of a model by module name, from an ONNX file and from the PyTorch model.

The dynamo ONNX exporter records, on every node, the module path it came from
(``pkg.torch.onnx.name_scopes``, e.g. ``['', 'model', 'model.backbone', 'model.backbone.conv1',
'conv2d']``, with the class of each scope in ``pkg.torch.onnx.class_hierarchy``). The output of
a module is the output of the last node (in graph order) inside its scope.
:func:`onnx_module_outputs` maps CoDINO module names (as ``model.named_modules()`` spells them,
the export's wrapper prefixes removed) to those tensors; :func:`onnx_layer_outputs` runs ONNX
Runtime with them as extra graph outputs and :func:`eager_layer_outputs` records the same modules
with forward hooks.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

import numpy as np
import onnx
import torch

from codetr.runtime.onnxruntime import create_session

DETECTOR_CLASS = "codetr.models.detector.CoDINO"
LEAF_TYPES = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm2d)
"""Modules compared layer by layer: their output is one tensor, the last node of their scope."""


def _scopes(node: onnx.NodeProto) -> tuple[list[str], list[str]] | None:
    props = {prop.key: prop.value for prop in node.metadata_props}
    if "pkg.torch.onnx.name_scopes" not in props or "pkg.torch.onnx.class_hierarchy" not in props:
        return None
    return ast.literal_eval(props["pkg.torch.onnx.name_scopes"]), ast.literal_eval(props["pkg.torch.onnx.class_hierarchy"])


def onnx_module_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """{CoDINO module name: ONNX tensor name of its output}, in graph order of the module's last
    node. Module names are relative to the CoDINO model (``backbone.conv1``); ValueError when
    the file carries no exporter scope metadata (written by torch.onnx's dynamo exporter)."""
    outputs: dict[str, str] = {}
    found_metadata = False
    for node in model.graph.node:
        scopes = _scopes(node)
        if scopes is None or not node.output:
            continue
        found_metadata = True
        names, classes = scopes
        if DETECTOR_CLASS not in classes:
            continue
        root = names[classes.index(DETECTOR_CLASS)]
        # The last scope is the op itself; the ones after the detector's are its submodules.
        for name in names[classes.index(DETECTOR_CLASS) + 1 : -1]:
            module = name[len(root) + 1 :] if root else name
            outputs.pop(module, None)  # re-insert: ordered by the module's last node
            outputs[module] = node.output[0]
    if not found_metadata:
        raise ValueError("the ONNX model has no pkg.torch.onnx.name_scopes metadata (export it with codetr export)")
    return outputs


def comparable_modules(model: torch.nn.Module, onnx_outputs: dict[str, str]) -> list[str]:
    """Names of ``model``'s leaf layers (:data:`LEAF_TYPES`) that the ONNX graph also names, in
    the ONNX graph's order."""
    leaves = {name for name, module in model.named_modules() if isinstance(module, LEAF_TYPES)}
    return [name for name in onnx_outputs if name in leaves]


def onnx_layer_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tensors: Sequence[str]) -> dict[str, np.ndarray]:
    """The values of ``tensors`` (ONNX tensor names) for ``feeds``, from ONNX Runtime on the CPU,
    with each one added to a copy of ``model`` as a graph output."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {output.name for output in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in tensors if name not in existing)
    session = create_session(model, ["CPUExecutionProvider"])
    values = session.run(list(tensors), feeds)
    return dict(zip(tensors, values))


def eager_layer_outputs(model: torch.nn.Module, images: torch.Tensor, image_sizes: torch.Tensor,
                        modules: Sequence[str]) -> dict[str, np.ndarray]:
    """The float32 outputs of ``model``'s ``modules`` (names from ``named_modules``) for one run,
    recorded by forward hooks."""
    recorded: dict[str, np.ndarray] = {}
    named = dict(model.named_modules())
    parameter = next(model.parameters())

    def hook(name):
        def record(module, inputs, output):
            recorded[name] = output.detach().float().cpu().numpy()
        return record

    handles = [named[name].register_forward_hook(hook(name)) for name in modules]
    try:
        with torch.inference_mode():
            model(images.to(parameter.device, torch.float32), image_sizes.to(parameter.device, torch.int64))
    finally:
        for handle in handles:
            handle.remove()
    return recorded
