"""TensorRT side of codetr: the MSDA plugin library, engine inspection and Torch-TensorRT
compilation. Nothing here imports TensorRT or Torch-TensorRT at import time; both are optional."""
