"""Names of the exported model's inputs and outputs, the same in every artifact.

Inputs: ``images`` [B, 3, H, W] float32 RGB 0-255 (resized and padded on the host),
``image_sizes`` [B, 2] int64 (h, w) of the valid content. Outputs: ``boxes`` [B, K, 4] float32
(x1, y1, x2, y2) in network-input pixels, ``scores`` [B, K] float32 sigmoid scores, descending,
``labels`` [B, K] int64 class indices; K = the config's ``max_per_img``.
"""

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels")
