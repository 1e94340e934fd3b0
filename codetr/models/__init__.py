"""Co-DINO inference model. ``build_model(config)`` gives a :class:`CoDINO` in eval mode."""

from __future__ import annotations

import torch

from codetr.config import Config
from codetr.models.detector import CoDINO, Detections, check_model_inputs, select_detections

__all__ = ["DTYPES", "CoDINO", "Detections", "build_model", "check_model_inputs", "select_detections"]

# The precisions a Co-DINO model runs in, by the names the command lines take.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def build_model(config: Config, seed: int | None = 0) -> CoDINO:
    """Builds the model with deterministic random weights (``seed``; None keeps the global RNG).

    Load real weights with :func:`codetr.checkpoint.load_checkpoint`.
    """
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = CoDINO(config.model, config.preprocess)
        _randomise(model)
    finally:
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    return model.eval()


def _randomise(model: CoDINO) -> None:
    """Non-trivial random values for parameters PyTorch initialises to constants (level
    embeddings, norms), so random-weight outputs exercise every term."""
    transformer = model.query_head.transformer
    torch.nn.init.normal_(transformer.level_embeds)
    torch.nn.init.normal_(transformer.query_embed.weight)

