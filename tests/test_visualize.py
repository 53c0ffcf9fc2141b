import numpy as np
import torch

from src.data.labels import PALETTE
from src.data.transforms import build_test_transform
from src.utils.visualize import colorize, denormalize


def test_colorize_uses_the_cityscapes_palette_and_black_for_ignore():
    out = colorize(torch.tensor([[0, 255], [13, 18]]))
    assert out.dtype == torch.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [128, 64, 128] and out[0, 1].tolist() == [0, 0, 0]
    assert out[1, 0].tolist() == list(PALETTE[13]) and out[1, 1].tolist() == list(PALETTE[18])


def test_denormalize_inverts_the_pipeline_normalisation():
    image = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    normalised = build_test_transform(scale=None)(image=image)["image"]
    back = denormalize(normalised).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(back - image).max() <= 1
