"""The contract every layer of codetr agrees on, importing nothing else of codetr's.

- :mod:`codetr.contract.io`: the exported model's input and output names.
- :mod:`codetr.contract.plugin`: the ONNX node of the MSDA plugins (ours and NVIDIA's), the ONNX
  IR version the files are written with.
- :mod:`codetr.contract.artifacts`: the artifact table (what an export writes, what a runtime
  loads), the MSDA forms and the Torch-TensorRT compile modes.
- :mod:`codetr.contract.metadata`: ``metadata.json``, its writer and its reader.
- :mod:`codetr.contract.onnx_graph`: element types, opset and IR version of ONNX models (read by the
  exporter and the ONNX Runtime runner alike).
- :mod:`codetr.contract.cache`: the one cache folder (``~/.cache/codetr``).
"""
