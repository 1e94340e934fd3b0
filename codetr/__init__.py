"""codetr: Co-DETR (Co-DINO) from PyTorch to deployment.

Importing codetr registers ``torch.ops.codetr.msda`` (as importing torchvision registers its ops).
"""

from codetr.interrupt import interrupt_exits  # standard library only: Ctrl-C while torch imports ends the command quietly

with interrupt_exits():
    from codetr.contract.versions import CODETR_VERSION as __version__  # noqa: F401 (re-exported)

    import codetr.ops  # noqa: F401  (registers torch.ops.codetr.*)
