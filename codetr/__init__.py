"""codetr: Co-DETR (Co-DINO) from PyTorch to TensorRT."""

__version__ = "0.1.0"
