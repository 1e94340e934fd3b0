"""INT8 sensitivity: quantize one layer group at a time and measure the AP it costs.

One ModelOpt calibration of every Linear/Conv2d gives the statistics; each row of the table then
quantizes only its group (:func:`codetr.quantization.int8.apply_amax`) and evaluates AP through
the ``evaluate`` callback (the caller's COCO evaluation). Rows: the floating-point baseline, one
per group, the default INT8 configuration (everything but :data:`DEFAULT_EXCLUDE`) and
everything quantized.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path

from torch import nn

from codetr.atomic import atomic_path
from codetr.quantization.int8 import DEFAULT_EXCLUDE, LayerAmax, apply_amax, excluded_names

_GROUP_RULES = (
    (r"backbone\.(conv1|patch_embed)(\.|$)", "backbone stem"),
    (r"backbone\.(layer\d+|stages\.\d+)", None),  # one group per ResNet layer / Swin stage
    (r"neck\.", "neck"),
    (r".*\.(sampling_offsets|attention_weights)$", "MSDA sampling offsets + attention weights"),
    (r"query_head\.transformer\.(encoder|decoder)\.layers\.\d+", None),  # one group per layer
    (r"query_head\.cls_branches\.", "classification branches"),
    (r"query_head\.reg_branches\.", "box branches"),
    (r"query_head\.transformer\.", "transformer other (enc_output, ref_point_head)"),
)


def layer_group(name: str) -> str:
    """The sensitivity group of module ``name`` (see ``_GROUP_RULES``; "other" if none)."""
    for pattern, group in _GROUP_RULES:
        match = re.match(pattern, name)
        if match:
            return group or match.group(0).removeprefix("query_head.transformer.")
    return "other"


def layer_groups(names: list[str]) -> dict[str, list[str]]:
    """Module names by group, groups in first-seen (model) order."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(layer_group(name), []).append(name)
    return groups


@dataclasses.dataclass(frozen=True)
class SensitivityRow:
    """AP (0-1) with ``modules`` quantized; ``drop``: baseline AP minus this AP."""

    group: str
    modules: tuple[str, ...]
    ap: float
    drop: float


def run_sensitivity(model: nn.Module, amax: dict[str, LayerAmax], evaluate: Callable[[nn.Module], float],
                    log: Callable[[str], None] = print) -> list[SensitivityRow]:
    """The table's rows: "floating point", each group, "default INT8", "all INT8".

    ``amax``: calibration of every module (:func:`codetr.quantization.int8.calibrate`);
    ``evaluate(model) -> AP`` runs a model (floating point or Q/DQ copy) on the validation set.
    """
    names = [name for name in amax]
    configurations = [("floating point", [])]
    configurations += list(layer_groups(names).items())
    excluded = excluded_names(names, DEFAULT_EXCLUDE)
    configurations.append(("default INT8", [name for name in names if name not in excluded]))
    configurations.append(("all INT8", names))
    rows: list[SensitivityRow] = []
    for group, modules in configurations:
        ap = evaluate(apply_amax(model, amax, modules) if modules else model)
        baseline = rows[0].ap if rows else ap
        rows.append(SensitivityRow(group, tuple(modules), ap, baseline - ap))
        log(f"{group:<48} {len(modules):>4} modules  AP {100 * ap:6.2f}  drop {100 * (baseline - ap):+6.2f} points")
    return rows


def format_table(rows: list[SensitivityRow]) -> str:
    """A Markdown table: group, modules, AP, AP drop (AP points, 0-100)."""
    lines = ["| group | modules | AP (points) | AP drop (points) |", "|---|---:|---:|---:|"]
    lines += [f"| {row.group} | {len(row.modules)} | {100 * row.ap:.2f} | {100 * row.drop:+.2f} |" for row in rows]
    return "\n".join(lines) + "\n"


def write_sensitivity(rows: list[SensitivityRow], path: Path, details: dict[str, object]) -> None:
    """``path`` (JSON: details + rows with AP in 0-1) and the Markdown table beside it (.md), atomically."""
    document = {**details, "rows": [dataclasses.asdict(row) for row in rows]}
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(document, indent=2) + "\n")
    with atomic_path(path.with_suffix(".md")) as temporary:
        temporary.write_text(format_table(rows))
