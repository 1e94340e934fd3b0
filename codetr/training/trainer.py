"""The training loop: data, optimiser, schedule, AMP, DDP, checkpoints, logs, validation.

Official recipe values (AdamW, backbone lr x0.1, weight decay, gradient clipping, step decay)
come from :class:`codetr.config.TrainConfig`. Checkpoints use mmdet 3.x's layout
``{"state_dict", "meta", "optimizer", "iteration"}`` plus ``scheduler``, ``grad_scaler`` and
``rng`` for an exact resume; their ``state_dict`` loads into the inference model with
:func:`codetr.checkpoint.load_checkpoint` (the denoising ``query_head.label_embedding`` is
dropped there as training-only, BatchNorm is saved as the frozen BatchNorm's four tensors).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import time
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torchvision.ops import FrozenBatchNorm2d
from tqdm import tqdm

from codetr.atomic import atomic_path
from codetr.checkpoint import CheckpointError, load_state_dict, load_torch_file, read_state_dict
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
    """What ``codetr train`` takes; None means not given: the config's value (batch_size, lr),
    12 epochs (iterations, epochs), amp "none", seed 0, no time limit, from scratch (checkpoint);
    with ``resume``, the run's own value. Given with ``resume``, each must equal the run's
    (:func:`check_resume_options`)."""

    config: Config
    data: Path
    output: Path
    checkpoint: Path | None = None
    iterations: int | None = None
    epochs: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    amp: str | None = None
    seed: int | None = None
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
    output = Path(options.output)
    latest = output / "latest.pth"
    stored = None
    if options.resume:
        stored = _read_run(latest)
        check_resume_options(options, stored["meta"])
        options = _run_options(options, stored["meta"])
    rank, world_size, device = _init_distributed(options.device)
    amp = options.amp or "none"
    seed = options.seed if options.seed is not None else 0
    amp_dtype = AMP_DTYPES[amp]
    if amp_dtype is torch.float16 and device.type != "cuda":
        raise ValueError(
            f"--amp fp16 needs a CUDA device (its GradScaler guards float16 gradients on GPUs; on a {device.type} "
            "float16 autocast is slow); use --amp bf16 there, or --amp none"
        )
    batch_size = options.batch_size or config.train.batch_size
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    train_split = resolve_split(options.data, "train")
    dataset = CocoTrainDataset(train_split, config, seed)
    batches_per_epoch = len(dataset) // batch_size
    if batches_per_epoch == 0:
        raise ValueError(f"--batch-size {batch_size} is larger than the dataset ({len(dataset)} images)")
    total = options.iterations if options.iterations is not None else math.ceil((options.epochs or 12) * batches_per_epoch)
    if total < 1:
        raise ValueError(f"--iterations must be >= 1, got {total}")

    torch.manual_seed(seed)
    model = build_model(config, seed=seed)
    objective = TrainingObjective(model, config.train)
    if stored is None:  # resuming, every weight comes from latest.pth below
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
    if stored is not None:
        start = _restore(stored, latest, model, optimizer, scheduler, scaler)
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
    sampler = GlobalBatchSampler(len(dataset), batch_size, rank, world_size, seed, start)
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
    if stored is None:
        meta = {"config": config.name, "config_file": config.source, "config_sha256": config_digest(config),
                "class_names": list(config.class_names), "data": str(Path(options.data).resolve()),
                "checkpoint": None if options.checkpoint is None else str(Path(options.checkpoint).resolve()),
                "seed": seed, "batch_size": batch_size, "lr": lr, "iterations": options.iterations,
                "epochs": options.epochs, "time_limit": options.time_limit, "amp": amp, **options.extra_meta}
    else:  # the run's values; keys a run started before codetr stored them lacks stay absent
        meta = {key: value for key, value in stored["meta"].items() if key != "iteration"}
    meta.update(world_size=world_size, total_iterations=total)
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
            step_schedule(scheduler)
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


def step_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """``scheduler.step()``, without the warning PyTorch gives when it runs before any
    ``optimizer.step()``: with --amp fp16 the GradScaler skips the first steps by design while it
    finds a scale that gives finite float16 gradients (torch.amp.GradScaler docs), and the
    schedule still counts them as iterations."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`")
        scheduler.step()


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


def _read_run(latest: Path) -> dict:
    """The checkpoint ``--resume`` continues from; ValueError when it is damaged, naming the
    run's ``iter_<n>.pth`` files to fall back to."""
    if not latest.is_file():
        raise FileNotFoundError(f"--resume: no {latest} to resume from")
    try:
        state = load_torch_file(latest)
        if not isinstance(state, dict) or not {"meta", "iteration", "optimizer", "scheduler"} <= state.keys():
            raise CheckpointError(f"{latest} is not a checkpoint written by codetr train (no optimizer, scheduler and meta)")
    except CheckpointError as error:
        numbers = sorted(int(path.stem[5:]) for path in latest.parent.glob("iter_*.pth") if path.stem[5:].isdigit())
        saved = [f"iter_{number}.pth" for number in numbers]
        fallback = (
            f"the run's earlier checkpoints are {', '.join(saved)}: copy the newest readable one over {latest} to "
            "resume from it" if saved else f"{latest.parent} holds no iter_<n>.pth checkpoint "
            "(written with --save-every) to fall back to"
        )
        raise CheckpointError(f"--resume: {error}; {fallback}") from error
    return state


RESUME_ARGUMENTS = {"batch_size": "--batch-size", "lr": "--lr", "iterations": "--iterations", "epochs": "--epochs",
                    "amp": "--amp", "seed": "--seed", "time_limit": "--time-limit"}
"""Options whose value (when given with ``resume``) must equal the run's meta entry of that name."""


def config_digest(config: Config) -> str:
    """SHA-256 of everything the config says (not the file it was read from): two configs that
    train the same model the same way have the same digest."""
    return hashlib.sha256(repr(replace(config, source="")).encode()).hexdigest()


def check_resume_options(options: TrainOptions, meta: dict) -> None:
    """ValueError listing every option given with ``resume`` that differs from the run's meta
    (its value when the run was started): a resumed run continues as it was started. Options
    not given (None) and entries the meta lacks (runs started before codetr stored them) are
    not compared."""
    given = {name: getattr(options, name) for name in RESUME_ARGUMENTS}
    given["data"] = str(Path(options.data).resolve())
    if options.checkpoint is not None:
        given["checkpoint"] = str(Path(options.checkpoint).resolve())
    differences = [
        f"{RESUME_ARGUMENTS.get(name, '--' + name)}: the run has {_shown(meta[name])}, given {_shown(value)}"
        for name, value in given.items() if value is not None and name in meta and meta[name] != value
    ]
    if "config_sha256" in meta and meta["config_sha256"] != config_digest(options.config):
        differences.insert(0, f"--config: the run has {meta['config']} ({meta.get('config_file')}), given "
                              f"{options.config.name} ({options.config.source}), which says something else")
    elif "config_sha256" not in meta and meta.get("config") != options.config.name:
        differences.insert(0, f"--config: the run has {meta.get('config')}, given {options.config.name}")
    if differences:
        raise ValueError(
            "--resume continues the run in {} as it was started, but these arguments differ from it:\n  {}\n"
            "Leave them out (or give the run's values) to resume; to train with the new values, start a new run "
            "in another --output with --checkpoint {}".format(
                options.output, "\n  ".join(differences), Path(options.output) / "latest.pth")
        )


def _shown(value: object) -> str:
    return "none (not given)" if value is None else str(value)


def _run_options(options: TrainOptions, meta: dict) -> TrainOptions:
    """``options`` with every schedule-shaping value not given taken from the run's meta."""
    taken = {name: meta[name] for name in ("batch_size", "lr", "iterations", "epochs", "amp", "seed")
             if getattr(options, name) is None and name in meta}
    return replace(options, **taken)


def _restore(state: dict, path: Path, model, optimizer, scheduler, scaler) -> int:
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
