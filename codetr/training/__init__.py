"""Training of Co-DINO's query head (DINO with contrastive denoising) on the deployment model.

Co-DINO's auxiliary heads (ATSS, RPN + RoI), which only add training signal, are not built:
training here optimises the same losses as mmdetection's ``CoDINOHead`` without the
collaborative auxiliary terms.
"""
