import pytest
import torch
import torch.nn.functional as F

from src.models.inference import slide_inference, window_grid


@pytest.mark.parametrize(
    ("w", "h", "grid"), [(1024, 512, (1, 3)), (1280, 720, (2, 4)), (960, 540, (2, 3)), (683, 512, (1, 2))]
)
def test_window_grid_counts(w, h, grid):
    windows = window_grid(h, w, 512, 341)
    ys = sorted({y1 for y1, _, _, _ in windows})
    xs = sorted({x1 for _, _, x1, _ in windows})
    assert (len(ys), len(xs)) == grid
    assert all(y2 - y1 == min(512, h) and x2 - x1 == min(512, w) for y1, y2, x1, x2 in windows)
    assert max(y2 for _, y2, _, _ in windows) == h and max(x2 for _, _, _, x2 in windows) == w


def _toy_model(crops: torch.Tensor) -> torch.Tensor:
    """A position-dependent 'model': its output depends on the crop content, so windows differ."""
    weight = torch.linspace(-1, 1, 3 * 5).view(5, 3, 1, 1)
    return F.conv2d(crops, weight).softmax(1)


@pytest.mark.parametrize(("h", "w"), [(512, 1024), (720, 1280), (540, 960), (300, 200)])
def test_batched_equals_window_loop(h, w):
    torch.manual_seed(0)
    images = torch.randn(2, 3, h, w)
    out = slide_inference(_toy_model, images, num_classes=5, crop=512, stride=341, out_size=(h + 10, w - 7))
    canvas = torch.zeros(2, 5, h, w)
    count = torch.zeros(1, 1, h, w)
    for y1, y2, x1, x2 in window_grid(h, w, 512, 341):  # the reference: one window at a time
        canvas[:, :, y1:y2, x1:x2] += _toy_model(images[:, :, y1:y2, x1:x2])
        count[:, :, y1:y2, x1:x2] += 1
    ref = F.interpolate(canvas / count, size=(h + 10, w - 7), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    chunked = slide_inference(
        _toy_model, images, num_classes=5, crop=512, stride=341, out_size=(h + 10, w - 7), max_batch=2
    )
    torch.testing.assert_close(chunked, ref, rtol=1e-5, atol=1e-6)


def test_all_windows_run_as_one_batch():
    calls = []

    def model(crops):
        calls.append(crops.shape[0])
        return crops.new_zeros(crops.shape[0], 4, *crops.shape[-2:])

    slide_inference(model, torch.zeros(1, 3, 720, 1280), num_classes=4, crop=512, stride=341)
    assert calls == [8]
