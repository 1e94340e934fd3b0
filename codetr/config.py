"""Typed, validated Co-DINO configurations read from TOML files.

The configs shipped with codetr live in the package (``codetr/configs/*.toml``, package data), so
an installed codetr has them: :func:`load_config` takes a path or a shipped config's name
(:func:`shipped_configs`, e.g. ``synthetic_r50``).

Every table maps onto a frozen dataclass. Validation is strict: an unknown (e.g. misspelled)
key, a missing required key or a value of the wrong type raises :class:`ConfigError` naming
the key path and the file, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
"""The 80 COCO detection classes in contiguous-label order (label i = i-th name)."""

COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip
"""COCO annotation-file category ids of the 80 classes, same order as COCO_CLASSES."""


class ConfigError(ValueError):
    """A configuration file is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class ResNetConfig:
    """torchvision ResNet with frozen BatchNorm (mmdet ``ResNet``, style='pytorch')."""

    depth: Literal[18, 34, 50, 101]
    out_indices: tuple[int, ...] = (0, 1, 2, 3)


@dataclass(frozen=True)
class SwinConfig:
    """Swin Transformer v1 backbone (mmdet ``SwinTransformer``)."""

    embed_dims: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    mlp_ratio: float = 4.0
    patch_size: int = 4
    out_indices: tuple[int, ...] = (0, 1, 2, 3)


@dataclass(frozen=True)
class NeckConfig:
    """mmdet ``ChannelMapper``: 1x1 conv + GroupNorm per input, stride-2 3x3 convs for extra levels."""

    in_channels: tuple[int, ...]
    out_channels: int = 256
    num_outs: int = 5
    num_groups: int = 32


@dataclass(frozen=True)
class TransformerConfig:
    """DINO deformable transformer of Co-DINO (``CoDinoTransformer``)."""

    embed_dims: int = 256
    num_heads: int = 8
    num_levels: int = 5
    num_points: int = 4
    encoder_layers: int = 6
    decoder_layers: int = 6
    ffn_dims: int = 2048
    num_queries: int = 900
    pos_temperature: float = 20.0


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int
    neck: NeckConfig
    transformer: TransformerConfig
    resnet: ResNetConfig | None = None
    swin: SwinConfig | None = None
    max_per_img: int = 300


@dataclass(frozen=True)
class PreprocessConfig:
    """Official test pipeline: keep-ratio resize into ``scale`` then pad.

    ``scale`` is (long edge limit, short edge limit) as in mmdet ``Resize(scale=..., keep_ratio=True)``.
    Padding goes to ``pad_size`` (h, w) when given (LSJ), otherwise to the batch maximum rounded
    up to ``size_divisor``. ``pad_value`` is an intensity in RGB 0-255 (the pipeline pads before
    normalising, e.g. LSJ's 114) or ``"mean"``: the ``mean`` colour, which the model's
    normalisation turns into exactly 0 (pipelines that pad after ``Normalize`` with 0).
    ``mask_padding``: whether the transformer ignores padded pixels (official ``with_attn_mask``);
    when false the whole padded canvas is treated as the image. ``pad_min_size`` (h, w): without a
    fixed ``pad_size``, pad at least to this (a dynamic export's smallest accepted input).
    """

    scale: tuple[int, int]
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    pad_size: tuple[int, int] | None = None
    size_divisor: int = 32
    pad_value: float | Literal["mean"] = 0.0
    mask_padding: bool = False
    pad_min_size: tuple[int, int] | None = None

    @property
    def pad_colour(self) -> tuple[float, float, float]:
        """The RGB 0-255 value written into padded pixels."""
        if self.pad_value == "mean":
            return self.mean
        return (self.pad_value, self.pad_value, self.pad_value)


@dataclass(frozen=True)
class NmsConfig:
    """Optional host-side NMS after the model's top-k (official ``test_cfg.nms``)."""

    kind: Literal["none", "nms", "soft_nms"] = "none"
    iou_threshold: float = 0.8
    sigma: float = 0.5
    min_score: float = 1e-3


@dataclass(frozen=True)
class TestConfig:
    score_threshold: float = 0.0
    nms: NmsConfig = NmsConfig()


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe of the Co-DINO query head (``[train]``; only ``codetr train`` reads it).

    Defaults are the official Co-DINO R50 recipe, mmdetection 3.x
    ``projects/CO-DETR/configs/codino/co_dino_5scale_r50_lsj_8xb2_1x_coco.py``: AdamW lr 2e-4,
    weight decay 1e-4, backbone lr x0.1, gradient clipping at L2 norm 0.1, batch 16 (8 GPUs x 2),
    QualityFocalLoss (beta 2) weight 1, L1 weight 5, GIoU weight 2; Hungarian costs FocalLossCost
    2, BBoxL1Cost 5 (xywh), IoUCost giou 2; denoising label_noise_scale 0.5, box_noise_scale 1.0,
    100 dynamic denoising queries; LSJ scale jitter 0.1-2.0 and horizontal flip 0.5; step decay
    x0.1 at epoch 11 of 12 (``step_milestones`` are fractions of the run). FocalLossCost's alpha
    0.25 / gamma 2 are mmdet's defaults.

    ``backbone_norm``: ``"frozen"`` keeps the model's frozen BatchNorm (fine-tuning from a
    pretrained backbone, as the official recipe does); ``"batch_norm"`` trains it as BatchNorm
    (SyncBatchNorm on several GPUs), for training from scratch. Both save the same four
    BatchNorm tensors, so inference and export load the checkpoint unchanged.
    """

    batch_size: int = 16
    lr: float = 2e-4
    backbone_lr_mult: float = 0.1
    weight_decay: float = 1e-4
    clip_grad_max_norm: float = 0.1
    warmup_iterations: int = 0
    schedule: Literal["step", "cosine"] = "step"
    step_milestones: tuple[float, ...] = (11 / 12,)
    step_gamma: float = 0.1
    backbone_norm: Literal["frozen", "batch_norm"] = "frozen"
    classification_loss: Literal["quality_focal", "focal"] = "quality_focal"
    loss_cls_weight: float = 1.0
    loss_bbox_weight: float = 5.0
    loss_iou_weight: float = 2.0
    match_cls_weight: float = 2.0
    match_bbox_weight: float = 5.0
    match_iou_weight: float = 2.0
    label_noise_scale: float = 0.5
    box_noise_scale: float = 1.0
    num_dn_queries: int = 100
    scale_range: tuple[float, float] = (0.1, 2.0)
    flip_prob: float = 0.5


@dataclass(frozen=True)
class Config:
    name: str
    model: ModelConfig
    preprocess: PreprocessConfig
    test: TestConfig
    class_names: tuple[str, ...]
    train: TrainConfig = TrainConfig()
    category_ids: tuple[int, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.class_names) != self.model.num_classes:
            raise ConfigError(
                f"{self.source}: class_names has {len(self.class_names)} names but "
                f"model.num_classes is {self.model.num_classes}"
            )
        if self.category_ids and len(self.category_ids) != self.model.num_classes:
            raise ConfigError(
                f"{self.source}: category_ids has {len(self.category_ids)} entries, "
                f"expected model.num_classes = {self.model.num_classes}"
            )
        if (self.model.resnet is None) == (self.model.swin is None):
            raise ConfigError(f"{self.source}: exactly one of [model.resnet] or [model.swin] is required")
        if self.model.neck.num_outs != self.model.transformer.num_levels:
            raise ConfigError(
                f"{self.source}: model.neck.num_outs ({self.model.neck.num_outs}) must equal "
                f"model.transformer.num_levels ({self.model.transformer.num_levels})"
            )
        if self.model.transformer.embed_dims != self.model.neck.out_channels:
            raise ConfigError(f"{self.source}: model.transformer.embed_dims must equal model.neck.out_channels")
        if self.model.transformer.embed_dims % 2:
            raise ConfigError(f"{self.source}: model.transformer.embed_dims must be even (sine encoding)")

    @property
    def coco_category_ids(self) -> tuple[int, ...]:
        """Category ids for COCO JSON output: the configured ones, else label + 1."""
        return self.category_ids or tuple(range(1, self.model.num_classes + 1))


# Named in the configs as `class_names = "coco"` instead of listing 80 names in every file.
_NAMED_CLASS_LISTS = {"coco": (COCO_CLASSES, COCO_CATEGORY_IDS)}


CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""The shipped configs (package data)."""


def shipped_configs() -> list[str]:
    """Names of the shipped configs (file stems in :data:`CONFIG_DIR`), sorted."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.toml"))


def resolve_config(config: str | Path) -> Path:
    """The TOML file ``config`` names: a file at that path, else the shipped config of that name
    (with or without ``.toml``). FileNotFoundError listing the shipped names when neither exists."""
    path = Path(config)
    if path.is_file():
        return path
    name = path.name.removesuffix(".toml")
    if path.name == str(config) and name in shipped_configs():
        return CONFIG_DIR / f"{name}.toml"
    raise FileNotFoundError(
        f"config {config}: no such file, and not a shipped config (shipped: {', '.join(shipped_configs())})"
    )


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML configuration file, given as a path or a shipped config's name
    (see :func:`resolve_config`)."""
    path = resolve_config(path)
    try:
        with path.open("rb") as file:
            table = tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from error
    table = dict(table)
    class_names = table.get("class_names")
    if isinstance(class_names, str):
        if class_names not in _NAMED_CLASS_LISTS:
            raise ConfigError(
                f"{path}: class_names = {class_names!r} is not a known list "
                f"({sorted(_NAMED_CLASS_LISTS)}); give a list of names instead"
            )
        names, ids = _NAMED_CLASS_LISTS[class_names]
        table["class_names"] = list(names)
        table.setdefault("category_ids", list(ids))
    table.setdefault("test", {})
    table["source"] = str(path)
    return _build(Config, table, "", path)


def _build(cls: type, table: Any, prefix: str, path: Path) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{prefix.rstrip('.')}] must be a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(prefix + key for key in unknown)}; "
            f"allowed here: {', '.join(sorted(fields))}"
        )
    values = {}
    for name, field in fields.items():
        key = prefix + name
        if name not in table:
            no_default = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            if no_default:
                raise ConfigError(f"{path}: missing required key {key}")
            continue
        values[name] = _convert(hints[name], table[name], key, path)
    return cls(**values)


def _convert(hint: Any, value: Any, key: str, path: Path) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]  # None is only ever a default
        problems = []
        for option in options:
            try:
                return _convert(option, value, key, path)
            except ConfigError as error:
                problems.append(str(error).removeprefix(f"{path}: "))
        if len(problems) == 1:
            raise ConfigError(f"{path}: {problems[0]}")
        raise ConfigError(f"{path}: {key} = {value!r} fits none of its forms: {'; '.join(problems)}")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".", path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {key} = {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: {key} must be a list, got {value!r}")
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{path}: {key} must have {len(args)} entries, got {len(value)}")
        item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return tuple(_convert(item, element, f"{key}[{i}]", path) for i, (item, element) in enumerate(zip(item_types, value)))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: {key} must be a number, got {value!r}")
        return float(value)
    if hint in (int, bool, str):
        if type(value) is not hint:
            raise ConfigError(f"{path}: {key} must be {hint.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {hint!r} for {key}")
