"""Training data: global batches split over ranks, per-sample deterministic augmentation, padding
and box normalisation."""

from __future__ import annotations

import dataclasses

import torch

from codetr.config import load_config
from codetr.training.data import CocoTrainDataset, GlobalBatchSampler, Sample, collate, resolve_split

TINY = "codetr/configs/tiny.toml"


def test_ranks_share_each_global_batch():
    single = iter(GlobalBatchSampler(10, 4, rank=0, world_size=1, seed=3))
    ranks = [iter(GlobalBatchSampler(10, 4, rank=r, world_size=2, seed=3)) for r in range(2)]
    for _ in range(5):  # crosses epochs (2 batches per epoch, the last 2 samples dropped)
        assert next(single) == next(ranks[0]) + next(ranks[1])
    resumed = iter(GlobalBatchSampler(10, 4, rank=0, world_size=1, seed=3, start_iteration=3))
    fresh = iter(GlobalBatchSampler(10, 4, rank=0, world_size=1, seed=3))
    for _ in range(3):
        next(fresh)
    assert next(resumed) == next(fresh)


def test_augmentation_depends_on_seed_epoch_and_index(rectangle_dataset):
    config = load_config(TINY)
    data = rectangle_dataset(splits={"train": 2}, class_names=config.class_names)
    dataset = CocoTrainDataset(resolve_split(data, "train"), config, seed=0)
    first, again = dataset[(1, 0)], dataset[(1, 0)]
    assert torch.equal(first.image, again.image) and torch.equal(first.boxes, again.boxes) and first.seed == again.seed
    other_epoch = dataset[(1, 1)]
    assert first.seed != other_epoch.seed
    assert first.image.shape != other_epoch.image.shape or not torch.equal(first.image, other_epoch.image)
    height, width = first.image.shape[1:]
    assert (first.boxes[:, 0::2] <= width).all() and (first.boxes[:, 1::2] <= height).all()
    assert (first.boxes[:, 2:] - first.boxes[:, :2] >= 1).all()


def test_collate_pads_to_the_canvas_and_normalises_boxes():
    preprocess = dataclasses.replace(load_config(TINY).preprocess, scale=(96, 64))
    small = Sample(torch.full((3, 10, 20), 7.0), torch.tensor([[2.0, 4.0, 12.0, 8.0]]), torch.tensor([3]), 1)
    batch = collate([small], preprocess)
    assert batch.images.shape == (1, 3, 64, 96)  # never smaller than the training canvas
    assert torch.equal(batch.image_sizes, torch.tensor([[10, 20]]))  # mask_padding: the content
    assert (batch.images[0, :, :10, :20] == 7).all() and (batch.images[0, :, 10:] == preprocess.pad_value).all()
    torch.testing.assert_close(batch.gt_boxes[0], torch.tensor([[7 / 20, 6 / 10, 10 / 20, 4 / 10]]))
