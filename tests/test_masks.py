import pytest
import torch

from vidgen import masks

GRID = (5, 4, 6)


def test_task_patterns():
    assert masks.prediction_mask(GRID, 2)[:, 0, 0].tolist() == [0, 0, 1, 1, 1]
    assert masks.backward_prediction_mask(GRID, 2)[:, 0, 0].tolist() == [1, 1, 1, 0, 0]
    assert masks.interpolation_mask(GRID, 2)[:, 0, 0].tolist() == [0, 1, 0, 1, 0]
    assert masks.unconditional_mask(GRID).min() == 1
    assert masks.single_frame_mask(GRID)[:, 0, 0].tolist() == [0, 1, 1, 1, 1]
    for m in (masks.prediction_mask(GRID, 2), masks.interpolation_mask(GRID, 3)):
        assert m.shape == GRID and (m == m[:, :1, :1]).all()  # temporal masks cover whole frames
    with pytest.raises(ValueError, match="task must be one of"):
        masks.task_mask("teleport", GRID)


def test_completion_mask_is_a_spatial_block_in_a_frame_range():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        m = masks.completion_mask((8, 8, 8), generator=g)
        frames = m.flatten(1).any(1)
        assert frames.any()  # never empty (VDT's end == 0 slicing bug)
        idx = frames.nonzero().flatten()
        assert (idx == torch.arange(idx[0], idx[-1] + 1)).all()  # a contiguous range
        assert (m[idx] == m[idx[0]]).all()  # the same spatial block in each masked frame
        assert 0.2 <= m[idx[0]].mean() <= 0.9


def test_training_sampler_mixes_tasks_like_vdt():
    g = torch.Generator().manual_seed(0)
    tasks = [masks.sample_training_mask((5, 8, 8), g)[0] for _ in range(2000)]
    spatial = tasks.count("complete") / len(tasks)
    assert 0.17 <= spatial <= 0.23
    for task in masks.TEMPORAL_TASKS:
        assert 0.10 <= tasks.count(task) / len(tasks) <= 0.17


def test_masked_loss_ignores_given_positions():
    pred, target = torch.randn(2, 3, *GRID), torch.randn(2, 3, *GRID)
    mask = masks.prediction_mask(GRID, 2)[None, None]
    loss = masks.masked_mse(pred, target, mask)
    changed = pred.clone()
    changed[:, :, :2] += 100.0  # given frames: any prediction there costs nothing
    assert masks.masked_mse(changed, target, mask) == loss
    changed[:, :, 2] += 1.0
    assert masks.masked_mse(changed, target, mask) > loss
