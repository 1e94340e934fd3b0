"""DINO deformable transformer of Co-DINO (inference path), mmcv/mmdet parameter names.

Layout (prefix ``query_head.transformer.``): ``level_embeds`` [L, C]; ``enc_output`` and
``enc_output_norm`` (two-stage proposals); ``query_embed`` (content queries, [Q, C]);
``encoder.layers.{i}.{attentions.0 (MSDA), norms.0, ffns.0.layers.{0.0,1}, norms.1}``;
``decoder.layers.{i}.{attentions.0.attn (nn.MultiheadAttention), attentions.1 (MSDA),
norms.0..2, ffns.0}``, ``decoder.ref_point_head.{0,2}``, ``decoder.norm``.
All layers are post-norm. The auxiliary-head parameters of the official model
(``aux_pos_trans*``, ``pos_feats_*``) are training-only and not built here.

Precision: boxes, reference points, proposals and everything that goes through
sigmoid / inverse-sigmoid stay at least float32 (float64 in a float64 model; fp16 logits of coordinates lose ~1e-3 relative precision,
i.e. pixels on a 1k image, and ``inf`` proposal masks must survive); the proposal top-k runs on
at least float32 scores so ties do not reorder queries; positional encodings are computed in float32 and
cast to the model dtype. MSDA receives float32 reference points; feature tensors stay in the model
dtype. No data-dependent Python control flow: torch.export works with dynamic H/W.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from codetr.config import TransformerConfig
from codetr.models.common import FFN, inverse_sigmoid
from codetr.models.positional_encoding import sine_box_encoding
from codetr.ops import MultiScaleDeformableAttention


@dataclass
class Levels:
    """Flattened multi-level geometry shared by every attention layer.

    spatial_shapes [L, 2] int64 (H, W); level_start_index [L] int64; padding_mask [B, S] bool
    (True = padded); valid_ratios [B, L, 2] float32 (valid width, valid height fractions);
    sizes: the (H, W) per level as Python/symbolic ints.
    """

    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    padding_mask: torch.Tensor
    valid_ratios: torch.Tensor
    sizes: list[tuple[int, int]]

    def attend(
        self, attention: MultiScaleDeformableAttention, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor
    ) -> torch.Tensor:
        """Runs an MSDA layer over these levels. The op path takes the shapes tensor; the
        pure-PyTorch path takes the (symbolic) ints, so a traced graph needs no ``.tolist()``."""
        shapes = self.sizes if attention.use_reference else self.spatial_shapes
        return attention(query, reference_points, value, shapes, self.level_start_index, self.padding_mask)


def _msda(config: TransformerConfig) -> nn.Module:
    return MultiScaleDeformableAttention(
        embed_dims=config.embed_dims,
        num_heads=config.num_heads,
        num_levels=config.num_levels,
        num_points=config.num_points,
    )


class EncoderLayer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([_msda(config)])
        self.norms = nn.ModuleList([nn.LayerNorm(config.embed_dims) for _ in range(2)])
        self.ffns = nn.ModuleList([FFN(config.embed_dims, config.ffn_dims, nn.ReLU)])

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor, reference_points: torch.Tensor, levels: Levels) -> torch.Tensor:
        """query, query_pos [B, S, C]; reference_points [B, S, L, 2] float32 -> [B, S, C]."""
        attended = levels.attend(self.attentions[0], query + query_pos, reference_points, query)
        query = self.norms[0](query + attended)
        return self.norms[1](self.ffns[0](query, identity=query))


class MultiheadAttention(nn.Module):
    """mmcv ``MultiheadAttention`` wrapper: parameters live in ``attn`` (``in_proj_weight`` ...)."""

    def __init__(self, embed_dims: int, num_heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, batch_first=True)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """attn_mask: optional [Q, Q] bool, True where a query may not attend (denoising groups)."""
        return self.attn(query, key, value, attn_mask=attn_mask, need_weights=False)[0]


class DecoderLayer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([MultiheadAttention(config.embed_dims, config.num_heads), _msda(config)])
        self.norms = nn.ModuleList([nn.LayerNorm(config.embed_dims) for _ in range(3)])
        self.ffns = nn.ModuleList([FFN(config.embed_dims, config.ffn_dims, nn.ReLU)])

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        reference_points: torch.Tensor,
        memory: torch.Tensor,
        levels: Levels,
        self_attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query, query_pos [B, Q, C]; reference_points [B, Q, L, 4] float32; memory [B, S, C];
        self_attn_mask: optional [Q, Q] bool (training with denoising queries)."""
        with_pos = query + query_pos
        query = self.norms[0](query + self.attentions[0](with_pos, with_pos, query, self_attn_mask))
        attended = levels.attend(self.attentions[1], query + query_pos, reference_points, memory)
        query = self.norms[1](query + attended)
        return self.norms[2](self.ffns[0](query, identity=query))


class Encoder(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor, levels: Levels) -> torch.Tensor:
        reference_points = encoder_reference_points(levels)
        for layer in self.layers:
            query = layer(query, query_pos, reference_points, levels)
        return query


class Decoder(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        dims = config.embed_dims
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.ref_point_head = nn.Sequential(nn.Linear(2 * dims, dims), nn.ReLU(), nn.Linear(dims, dims))
        self.norm = nn.LayerNorm(dims)

    def forward(
        self, query: torch.Tensor, reference_boxes: torch.Tensor, memory: torch.Tensor, levels: Levels, reg_branches: nn.ModuleList
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Iterative box refinement with ``reg_branches[i]`` after layer i.

        query [B, Q, C]; reference_boxes [B, Q, 4] float32 sigmoid-space (cx, cy, w, h).
        Returns the normalised last-layer state [B, Q, C] and the reference boxes that entered the
        last layer [B, Q, 4] float32 (the head refines them once more, as in mmdet).
        """
        ratios = _box_ratios(levels)
        last = len(self.layers) - 1
        for index in range(len(self.layers)):
            query = self._layer(index, query, reference_boxes, memory, levels, ratios)
            if index < last:
                delta = reg_branches[index](query).float()
                reference_boxes = (delta + inverse_sigmoid(reference_boxes)).sigmoid()
        return self.norm(query), reference_boxes

    def forward_train(
        self,
        query: torch.Tensor,
        reference_boxes: torch.Tensor,
        memory: torch.Tensor,
        levels: Levels,
        reg_branches: nn.ModuleList,
        self_attn_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Training path (mmdet ``DinoTransformerDecoder`` with ``return_intermediate``).

        Returns every layer's normalised state [D, B, Q, C] and the reference boxes that entered
        each layer (D tensors [B, Q, 4] float32, sigmoid space). The next layer starts from the
        detached refinement, while the loss of layer i+1 sees the refinement with its gradient
        (DINO's "look forward twice").
        """
        ratios = _box_ratios(levels)
        states, references = [], [reference_boxes]
        for index in range(len(self.layers)):
            query = self._layer(index, query, reference_boxes, memory, levels, ratios, self_attn_mask)
            states.append(self.norm(query))
            if index < len(self.layers) - 1:
                refined = (reg_branches[index](query).float() + inverse_sigmoid(reference_boxes)).sigmoid()
                references.append(refined)
                reference_boxes = refined.detach()
        return torch.stack(states), references

    def _layer(
        self,
        index: int,
        query: torch.Tensor,
        reference_boxes: torch.Tensor,
        memory: torch.Tensor,
        levels: Levels,
        ratios: torch.Tensor,
        self_attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoder layer ``index`` with its positional query from the reference boxes."""
        boxes_per_level = reference_boxes[:, :, None] * ratios
        query_pos = self.ref_point_head(sine_box_encoding(boxes_per_level[:, :, 0], query.shape[-1] // 2).to(query.dtype))
        return self.layers[index](query, query_pos, boxes_per_level, memory, levels, self_attn_mask)


def _box_ratios(levels: Levels) -> torch.Tensor:
    """[B, 1, L, 4] valid fractions (w, h, w, h) that map image-relative boxes onto each level."""
    return torch.cat([levels.valid_ratios, levels.valid_ratios], -1)[:, None]


def encoder_reference_points(levels: Levels) -> torch.Tensor:
    """Pixel centres of every level, normalised by the valid size: [B, S, L, 2] float32 (x, y)."""
    ratios = levels.valid_ratios
    device = ratios.device
    points = []
    for level, (height, width) in enumerate(levels.sizes):
        ys = torch.arange(height, dtype=torch.float32, device=device) + 0.5
        xs = torch.arange(width, dtype=torch.float32, device=device) + 0.5
        ys = ys[None, :, None] / (ratios[:, None, None, level, 1] * height)
        xs = xs[None, None, :] / (ratios[:, None, None, level, 0] * width)
        grid = torch.stack(torch.broadcast_tensors(xs, ys), dim=-1)
        points.append(grid.flatten(1, 2))
    return torch.cat(points, 1)[:, :, None] * ratios[:, None]


class CoDinoTransformer(nn.Module):
    """Encoder, two-stage query selection and decoder of Co-DINO."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        dims = config.embed_dims
        self.num_queries = config.num_queries
        self.level_embeds = nn.Parameter(torch.zeros(config.num_levels, dims))
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.enc_output = nn.Linear(dims, dims)
        self.enc_output_norm = nn.LayerNorm(dims)
        self.query_embed = nn.Embedding(config.num_queries, dims)

    def forward(
        self,
        features: list[torch.Tensor],
        masks: list[torch.Tensor],
        positions: list[torch.Tensor],
        cls_branches: nn.ModuleList,
        reg_branches: nn.ModuleList,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Levels]:
        """features/positions [B, C, H_l, W_l], masks [B, H_l, W_l] bool (True = padding).

        Returns (decoder state [B, Q, C], boxes entering the last layer [B, Q, 4] float32,
        encoder memory [B, S, C], levels).
        """
        memory, levels = self.encode(features, masks, positions)
        _, proposal_boxes, top = self.score_proposals(memory, levels, cls_branches, reg_branches)
        reference_boxes = _gather_queries(proposal_boxes, top).sigmoid()
        query = self.query_embed.weight[None].expand(memory.shape[0], -1, -1)
        state, last_boxes = self.decoder(query, reference_boxes, memory, levels, reg_branches)
        return state, last_boxes, memory, levels

    def forward_train(
        self,
        features: list[torch.Tensor],
        masks: list[torch.Tensor],
        positions: list[torch.Tensor],
        cls_branches: nn.ModuleList,
        reg_branches: nn.ModuleList,
        dn_label_query: torch.Tensor | None = None,
        dn_box_query: torch.Tensor | None = None,
        self_attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Training path: as ``forward`` plus what the losses need (mmdet ``DINO.pre_decoder``).

        dn_label_query [B, N_dn, C] and dn_box_query [B, N_dn, 4] (inverse-sigmoid space) are the
        denoising queries put before the Q matching queries; self_attn_mask [N_dn+Q, N_dn+Q] bool
        keeps the groups apart. Returns (decoder states [D, B, N_dn+Q, C], the D reference boxes
        entering each layer [B, N_dn+Q, 4], the selected proposals' logits [B, Q, num_classes]
        and boxes [B, Q, 4] float32 sigmoid (cx, cy, w, h), for the encoder loss).
        """
        memory, levels = self.encode(features, masks, positions)
        class_logits, proposal_boxes, top = self.score_proposals(memory, levels, cls_branches, reg_branches)
        proposal_logits = _gather_queries(class_logits, top)
        proposal_boxes = _gather_queries(proposal_boxes, top)
        query = self.query_embed.weight[None].expand(memory.shape[0], -1, -1)
        # Like DINO, the decoder starts from the proposals without gradient into the encoder.
        reference_boxes = proposal_boxes.detach()
        if dn_label_query is not None:
            query = torch.cat([dn_label_query.to(query.dtype), query], 1)
            reference_boxes = torch.cat([dn_box_query.to(reference_boxes.dtype), reference_boxes], 1)
        states, references = self.decoder.forward_train(
            query, reference_boxes.sigmoid(), memory, levels, reg_branches, self_attn_mask
        )
        return states, references, proposal_logits, proposal_boxes.sigmoid()

    def encode(
        self, features: list[torch.Tensor], masks: list[torch.Tensor], positions: list[torch.Tensor]
    ) -> tuple[torch.Tensor, Levels]:
        """Flattens the levels and runs the encoder: memory [B, S, C] and the level geometry."""
        levels = flatten_levels(features, masks)
        tokens = torch.cat([feature.flatten(2).transpose(1, 2) for feature in features], 1)
        query_pos = torch.cat(
            [
                position.flatten(2).transpose(1, 2).to(tokens.dtype) + self.level_embeds[level]
                for level, position in enumerate(positions)
            ],
            1,
        )
        return self.encoder(tokens, query_pos, levels), levels

    def score_proposals(
        self, memory: torch.Tensor, levels: Levels, cls_branches: nn.ModuleList, reg_branches: nn.ModuleList
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two-stage query selection: scores every encoder token's proposal.

        Returns class logits [B, S, num_classes] and boxes [B, S, 4] in inverse-sigmoid space,
        both at least float32, and the indices [B, Q] of the ``num_queries`` best tokens.
        """
        proposal_memory, proposals = self.encoder_proposals(memory, levels)
        num_decoder_layers = len(self.decoder.layers)
        proposal_dtype = torch.promote_types(proposal_memory.dtype, torch.float32)  # float64 stays float64
        class_logits = cls_branches[num_decoder_layers](proposal_memory).to(proposal_dtype)
        proposal_boxes = reg_branches[num_decoder_layers](proposal_memory).to(proposal_dtype) + proposals
        top = torch.topk(class_logits.max(-1)[0], self.num_queries, dim=1)[1]
        return class_logits, proposal_boxes, top

    def encoder_proposals(self, memory: torch.Tensor, levels: Levels) -> tuple[torch.Tensor, torch.Tensor]:
        """One box per encoder token: centre = the pixel, size 0.05 * 2^level (normalised).

        Returns (projected memory [B, S, C], proposals [B, S, 4] float32 in inverse-sigmoid space,
        +inf where the token is padding or the box is too close to the border).
        """
        batch = memory.shape[0]
        mask = levels.padding_mask
        proposals = []
        start = 0
        for level, (height, width) in enumerate(levels.sizes):
            level_mask = mask[:, start : start + height * width].view(batch, height, width)
            start = start + height * width
            valid_height = (~level_mask[:, :, 0]).sum(1).float()
            valid_width = (~level_mask[:, 0, :]).sum(1).float()
            ys = torch.arange(height, dtype=torch.float32, device=memory.device) + 0.5
            xs = torch.arange(width, dtype=torch.float32, device=memory.device) + 0.5
            ys = ys[None, :, None] / valid_height[:, None, None]
            xs = xs[None, None, :] / valid_width[:, None, None]
            centres = torch.stack(torch.broadcast_tensors(xs, ys), dim=-1).flatten(1, 2)
            sizes = torch.full_like(centres, 0.05 * 2.0**level)
            proposals.append(torch.cat([centres, sizes], -1))
        proposals = torch.cat(proposals, 1)
        # min/max instead of .all(): Torch-TensorRT has no converter for aten.all, which would
        # leave a PyTorch segment in an otherwise single-engine graph.
        keep = (proposals.amin(-1, keepdim=True) > 0.01) & (proposals.amax(-1, keepdim=True) < 0.99)
        proposals = torch.log(proposals / (1 - proposals))
        invalid = mask[..., None] | ~keep
        proposals = proposals.masked_fill(invalid, float("inf"))
        memory = memory.masked_fill(invalid, 0.0)
        return self.enc_output_norm(self.enc_output(memory)), proposals


def _gather_queries(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """values [B, S, K], indices [B, Q] -> [B, Q, K]."""
    return torch.gather(values, 1, indices[..., None].expand(-1, -1, values.shape[-1]))


def flatten_levels(features: list[torch.Tensor], masks: list[torch.Tensor]) -> Levels:
    """Geometry of the flattened multi-level sequence, built once per forward from the shapes."""
    sizes = [(feature.shape[2], feature.shape[3]) for feature in features]
    device = features[0].device
    spatial_shapes = torch.tensor(sizes, dtype=torch.int64, device=device)
    areas = spatial_shapes.prod(1)
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    valid_ratios = torch.stack([_valid_ratio(mask) for mask in masks], 1)
    padding_mask = torch.cat([mask.flatten(1) for mask in masks], 1)
    return Levels(spatial_shapes, level_start_index, padding_mask, valid_ratios, sizes)


def _valid_ratio(mask: torch.Tensor) -> torch.Tensor:
    """mask [B, H, W] -> [B, 2] float32 (valid fraction of width, of height)."""
    height, width = mask.shape[1], mask.shape[2]
    valid_height = (~mask[:, :, 0]).sum(1).float() / height
    valid_width = (~mask[:, 0, :]).sum(1).float() / width
    return torch.stack([valid_width, valid_height], -1)
