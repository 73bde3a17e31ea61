"""The one padding helper: prompts on the left, answers on the right, never a zero-width batch."""

import torch

from zerosiam_hf.generation import pad


def test_pad_left_and_right():
    ids, mask = pad([[5, 6], [7], []], 0, side="left")
    assert ids.tolist() == [[5, 6], [0, 7], [0, 0]] and mask.tolist() == [[1, 1], [0, 1], [0, 0]]
    ids, mask = pad([[5, 6], [7], []], 0, side="right")
    assert ids.tolist() == [[5, 6], [7, 0], [0, 0]] and mask.tolist() == [[1, 1], [1, 0], [0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_pad_keeps_one_column_for_empty_answers():
    ids, mask = pad([[], []], 3, side="right")
    assert ids.tolist() == [[3], [3]] and mask.tolist() == [[0], [0]]
