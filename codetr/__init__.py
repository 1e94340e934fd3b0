"""codetr: Co-DETR (Co-DINO) from PyTorch to deployment.

Importing codetr registers ``torch.ops.codetr.msda`` (as importing torchvision registers its ops).
"""

__version__ = "0.1.0"

import codetr.ops  # noqa: E402,F401  (registers torch.ops.codetr.*)
