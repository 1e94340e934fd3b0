"""The training loop: data, optimiser, schedule, AMP, DDP, checkpoints, logs, validation.

Official recipe values (AdamW, backbone lr x0.1, weight decay, gradient clipping, step decay)
come from :class:`codetr.config.TrainConfig`. Checkpoints use mmdet 3.x's layout
``{"state_dict", "meta", "optimizer", "iteration"}`` plus ``scheduler``, ``grad_scaler`` and
``rng`` for an exact resume; their ``state_dict`` loads into the inference model with
:func:`codetr.checkpoint.load_checkpoint` (the denoising ``query_head.label_embedding`` is
dropped there as training-only, BatchNorm is saved as the frozen BatchNorm's four tensors).
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torchvision.ops import FrozenBatchNorm2d
from tqdm import tqdm

from codetr.atomic import atomic_path
from codetr.checkpoint import load_state_dict, read_state_dict
from codetr.config import Config
from codetr.models import CoDINO, build_model
from codetr.training.data import CocoTrainDataset, GlobalBatchSampler, collate, resolve_split
from codetr.training.objective import GlobalCounts, TrainingObjective
from codetr.training.validation import evaluate_model

logger = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_PRIOR_PROBABILITY = 0.01  # mmdet bias_init_with_prob(0.01) for the classification branches


@dataclass
class TrainOptions:
    """What ``codetr train`` takes; None means the config's value."""

    config: Config
    data: Path
    output: Path
    checkpoint: Path | None = None
    iterations: int | None = None
    epochs: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    amp: str = "none"
    seed: int = 0
    resume: bool = False
    save_every: int = 0
    eval_every: int = 0
    log_every: int = 10
    workers: int = 0
    device: str | None = None
    progress: bool = True
    time_limit: float | None = None
    extra_meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    iterations: int
    final_loss: float
    metrics: dict[str, float] | None


def train(options: TrainOptions) -> TrainResult:
    """Trains and writes OUT/latest.pth, OUT/iter_<n>.pth, OUT/train_log.jsonl, OUT/loss.png and
    (when evaluating) OUT/metrics.json. Under torchrun (WORLD_SIZE > 1) runs data-parallel."""
    config = options.config
    rank, world_size, device = _init_distributed(options.device)
    amp_dtype = AMP_DTYPES[options.amp]
    batch_size = options.batch_size or config.train.batch_size
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    train_split = resolve_split(options.data, "train")
    dataset = CocoTrainDataset(train_split, config, options.seed)
    batches_per_epoch = len(dataset) // batch_size
    if batches_per_epoch == 0:
        raise ValueError(f"--batch-size {batch_size} is larger than the dataset ({len(dataset)} images)")
    total = options.iterations if options.iterations is not None else math.ceil((options.epochs or 12) * batches_per_epoch)
    if total < 1:
        raise ValueError(f"--iterations must be >= 1, got {total}")
    output = Path(options.output)

    torch.manual_seed(options.seed)
    model = build_model(config, seed=options.seed)
    objective = TrainingObjective(model, config.train)
    if options.checkpoint is None:
        init_for_training(model)
    else:
        load_initial_weights(model, options.checkpoint)
    if config.train.backbone_norm == "batch_norm":
        trainable_batch_norm(model.backbone)
        if world_size > 1 and device.type == "cuda":
            model.backbone = nn.SyncBatchNorm.convert_sync_batchnorm(model.backbone)
    objective.to(device).train()

    lr = options.lr if options.lr is not None else config.train.lr
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in model.named_parameters() if not n.startswith("backbone.")], "lr": lr},
            {"params": [p for n, p in model.named_parameters() if n.startswith("backbone.")], "lr": lr * config.train.backbone_lr_mult},
        ],
        lr=lr,
        weight_decay=config.train.weight_decay,
    )
    schedule = LrSchedule(config.train.schedule, total, config.train.warmup_iterations, config.train.step_milestones, config.train.step_gamma)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)

    start = 0
    latest = output / "latest.pth"
    if options.resume:
        if not latest.is_file():
            raise FileNotFoundError(f"--resume: no {latest} to resume from")
        start = _restore(latest, model, optimizer, scheduler, scaler)
        total = schedule.total  # a time-limited run may have shortened it
        if start >= total:
            raise ValueError(
                f"--resume: the run in {output} already finished ({start} of {total} iterations) and its learning-rate "
                f"schedule has ended; to train further, start a new run with --checkpoint {latest}"
            )
        logger.info("resumed from %s at iteration %d of %d", latest, start, total)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model.backbone.to(memory_format=torch.channels_last)

    trained = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None) if world_size > 1 else objective
    sampler = GlobalBatchSampler(len(dataset), batch_size, rank, world_size, options.seed, start)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=partial(collate, preprocess=config.preprocess),
        num_workers=options.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=options.workers > 0,
        prefetch_factor=4 if options.workers > 0 else None,
    )
    if rank == 0:  # only now: a run that fails while loading its weights leaves no empty folder
        output.mkdir(parents=True, exist_ok=True)
    log_path = output / "train_log.jsonl"
    meta = {"config": config.name, "class_names": list(config.class_names), "seed": options.seed, "batch_size": batch_size,
            "world_size": world_size, "amp": options.amp, "total_iterations": total, **options.extra_meta}
    progress = tqdm(total=total, initial=start, disable=rank != 0 or not options.progress, desc="train", dynamic_ncols=True)
    window_start, window_images = time.perf_counter(), 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loss_value = float("nan")
    metrics = None
    iteration = start
    batches = iter(loader)
    clock = _TimeLimit(options.time_limit, start, world_size, device) if options.time_limit else None
    try:
        while iteration < total:
            batch = next(batches).to(device)
            if device.type == "cuda":
                batch = replace(batch, images=batch.images.contiguous(memory_format=torch.channels_last))
            counts = _global_counts(batch.gt_labels, world_size, device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss, terms = trained(batch.images, batch.image_sizes, batch.gt_labels, batch.gt_boxes, batch.seeds, counts)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = nn.utils.clip_grad_norm_(objective.parameters(), config.train.clip_grad_max_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            iteration += 1
            window_images += batch_size
            progress.update(1)
            if clock is not None:
                fitted = clock.fit(iteration, total)
                if fitted != total:
                    logger.info("--time-limit: %d iterations fit; the schedule now ends there", fitted)
                    total = schedule.total = meta["total_iterations"] = fitted
                    progress.total = total

            if iteration % options.log_every == 0 or iteration == total:
                values = _reduce_terms(loss, terms, world_size)
                loss_value = values.pop("loss")
                elapsed = time.perf_counter() - window_start
                record = {"iteration": iteration, "loss": loss_value, **values, "lr": scheduler.get_last_lr()[0],
                          "grad_norm": float(grad_norm), "images_per_second": window_images / max(elapsed, 1e-9),
                          "max_memory_gib": _max_memory_gib(device)}
                if rank == 0:
                    with log_path.open("a") as file:
                        file.write(json.dumps(record) + "\n")
                    progress.set_postfix(loss=f"{loss_value:.3f}", ips=f"{record['images_per_second']:.0f}")
                window_start, window_images = time.perf_counter(), 0
            save_now = options.save_every > 0 and iteration % options.save_every == 0
            if save_now or iteration == total:
                if rank == 0:
                    state = _checkpoint(model, optimizer, scheduler, scaler, iteration, meta)
                    if save_now:
                        _save(state, output / f"iter_{iteration}.pth")
                    _save(state, latest)
                _barrier(world_size)
            if options.eval_every > 0 and (iteration % options.eval_every == 0 or iteration == total):
                if rank == 0:
                    metrics = evaluate_model(model, config, resolve_split(options.data, "val"), device, workers=options.workers)
                    record = {"iteration": iteration, **{f"val/{k}": v for k, v in metrics.items()}}
                    with log_path.open("a") as file:
                        file.write(json.dumps(record) + "\n")
                    progress.write(f"iteration {iteration}: AP {metrics['AP']:.4f} AP50 {metrics['AP50']:.4f}")
                _barrier(world_size)
    except KeyboardInterrupt:
        # Ctrl-C keeps the work done so far: the weights after the last finished step become
        # latest.pth (resuming from it is not bit-exact if the interrupt hit mid-step).
        if rank == 0 and iteration > start:
            _save(_checkpoint(model, optimizer, scheduler, scaler, iteration, meta), latest)
            progress.write(f"interrupted at iteration {iteration}: saved {latest} (continue with --resume)")
        raise
    progress.close()
    if rank == 0:
        if metrics is not None:
            with atomic_path(output / "metrics.json") as temporary:
                temporary.write_text(json.dumps({"iteration": total, "bbox": metrics}, indent=2))
        plot_losses(log_path, output / "loss.png")
    return TrainResult(total, loss_value, metrics)


class LrSchedule:
    """Learning-rate factor per step: linear warm-up from 0.001 (mmdet ``LinearLR``
    start_factor) over ``warmup`` steps, then step decay by ``gamma`` at the given fractions of
    the run, or cosine to zero. Plain attributes only: LambdaLR saves them in the checkpoint,
    which must stay loadable with ``weights_only=True``."""

    def __init__(self, kind: str, total: int, warmup: int, milestones: tuple[float, ...], gamma: float) -> None:
        self.kind = kind
        self.total = total
        self.warmup = warmup
        self.milestones = tuple(milestones)
        self.gamma = gamma

    def __call__(self, step: int) -> float:
        factor = 1.0
        if step < self.warmup:
            factor = 0.001 + (1 - 0.001) * step / self.warmup
        if self.kind == "cosine":
            progress = min(max(step - self.warmup, 0) / max(self.total - self.warmup, 1), 1.0)
            return factor * 0.5 * (1 + math.cos(math.pi * progress))
        return factor * self.gamma ** sum(step >= milestone * self.total for milestone in self.milestones)


class _TimeLimit:
    """``--time-limit``: after a short measurement, shortens the run (and its schedule) to the
    iterations that fit the remaining time, keeping 5% for checkpoints and evaluation. Rank 0's
    decision is broadcast so every process stops together."""

    MEASURE_FROM, MEASURE_TO = 10, 40  # iterations after the start; the first ones warm up

    def __init__(self, minutes: float, start: int, world_size: int, device: torch.device) -> None:
        self.deadline = time.perf_counter() + minutes * 60 * 0.95
        self.start = start
        self.world_size = world_size
        self.device = device
        self.mark = 0.0

    def fit(self, iteration: int, total: int) -> int:
        done = iteration - self.start
        if done == self.MEASURE_FROM:
            self._sync()
            self.mark = time.perf_counter()
        if done != self.MEASURE_TO:
            return total
        self._sync()
        now = time.perf_counter()
        per_iteration = (now - self.mark) / (self.MEASURE_TO - self.MEASURE_FROM)
        fitted = torch.tensor([min(total, iteration + int((self.deadline - now) / per_iteration))])
        if self.world_size > 1:
            fitted = fitted.to(self.device if dist.get_backend() == "nccl" else "cpu")
            dist.broadcast(fitted, 0)
        return max(int(fitted), iteration)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def init_for_training(model: CoDINO) -> None:
    """mmdet ``DeformableDETRHead`` / ``DINO`` initialisation for training from scratch:
    Xavier-uniform transformer weights (MSDA keeps its own), classification biases at the prior
    probability 0.01, the last box-regression layers at zero."""
    head = model.query_head
    for name, parameter in head.transformer.named_parameters():
        if parameter.dim() > 1 and "attentions" not in name and name not in ("level_embeds", "query_embed.weight"):
            nn.init.xavier_uniform_(parameter)
    for branch in head.cls_branches:
        nn.init.constant_(branch.bias, -math.log((1 - _PRIOR_PROBABILITY) / _PRIOR_PROBABILITY))
    for branch in head.reg_branches:
        nn.init.zeros_(branch[-1].weight)
        nn.init.zeros_(branch[-1].bias)


def load_initial_weights(model: CoDINO, path: Path) -> None:
    """Loads an official or own checkpoint for fine-tuning. mmdet 3.x keeps the denoising label
    embedding under ``query_head.dn_generator.``; a checkpoint without one (or with another
    number of classes) keeps the fresh embedding."""
    state = read_state_dict(path)
    key = "query_head.label_embedding.weight"
    official = "query_head.dn_generator.label_embedding.weight"
    if official in state:
        state[key] = state.pop(official)
    embedding = model.query_head.label_embedding
    if embedding is not None and (key not in state or state[key].shape != embedding.weight.shape):
        state[key] = embedding.weight.detach().clone()
    load_state_dict(model, state, source=str(path))


def trainable_batch_norm(module: nn.Module) -> None:
    """Replaces every FrozenBatchNorm2d by a BatchNorm2d with the same tensors (train-mode
    statistics; in eval mode it computes exactly what the frozen one does)."""
    for name, child in module.named_children():
        if isinstance(child, FrozenBatchNorm2d):
            norm = nn.BatchNorm2d(child.weight.shape[0], eps=child.eps)
            with torch.no_grad():
                for tensor in ("weight", "bias", "running_mean", "running_var"):
                    getattr(norm, tensor).copy_(getattr(child, tensor))
            setattr(module, name, norm.to(child.weight.device))
        else:
            trainable_batch_norm(child)


def _init_distributed(requested: str | None) -> tuple[int, int, torch.device]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if world_size > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        # torch 2.11 refuses a device without an index here.
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return (dist.get_rank() if world_size > 1 else 0), world_size, device


def _global_counts(gt_labels: list[torch.Tensor], world_size: int, device: torch.device) -> GlobalCounts:
    local = torch.tensor([sum(len(labels) for labels in gt_labels), max((len(labels) for labels in gt_labels), default=0)])
    if world_size > 1:
        backend_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
        total = local[:1].to(backend_device)
        largest = local[1:].to(backend_device)
        dist.all_reduce(total)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX)
        local = torch.cat([total.cpu(), largest.cpu()])
    return GlobalCounts(int(local[0]), world_size, int(local[1]))


def _reduce_terms(loss: torch.Tensor, terms: dict[str, torch.Tensor], world_size: int) -> dict[str, float]:
    """The logged values: the mean over ranks of every term (each rank normalises its part by
    the global box count / world size), i.e. the loss of the whole global batch."""
    names = ["loss", *terms]
    values = torch.stack([loss.detach().float(), *(t.detach().float() for t in terms.values())])
    if world_size > 1:
        values = values.to("cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(values)
        values = values / world_size
    return dict(zip(names, values.cpu().tolist()))


def _max_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def inference_state_dict(model: CoDINO) -> dict[str, torch.Tensor]:
    """The model's tensors as the inference model names them (no BatchNorm counters)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def _checkpoint(model, optimizer, scheduler, scaler, iteration: int, meta: dict) -> dict:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "state_dict": inference_state_dict(model),
        "meta": {**meta, "iteration": iteration},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "grad_scaler": scaler.state_dict(),
        "iteration": iteration,
        "rng": rng,
    }


def _save(state: dict, path: Path) -> None:
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def _restore(path: Path, model, optimizer, scheduler, scaler) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state["state_dict"], strict=False)
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model: missing {missing}, unexpected {unexpected}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["grad_scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["iteration"])


def plot_losses(log_path: Path, png_path: Path) -> None:
    """Total loss (and validation AP, if logged) against iteration, as a PNG (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no %s", png_path)
        return
    records = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.is_file() else []
    losses = [(r["iteration"], r["loss"]) for r in records if "loss" in r]
    aps = [(r["iteration"], r["val/AP"]) for r in records if "val/AP" in r]
    figure, axis = plt.subplots(figsize=(7, 4))
    if losses:
        axis.plot(*zip(*losses), label="training loss")
    axis.set_xlabel("iteration")
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    if aps:
        right = axis.twinx()
        right.plot(*zip(*aps), "o-", color="tab:red", label="val AP")
        right.set_ylabel("val AP")
        right.set_ylim(0, 1)
    axis.set_title("codetr train")
    figure.tight_layout()
    with atomic_path(png_path) as temporary:
        figure.savefig(temporary, dpi=100)
    plt.close(figure)
