import numpy as np
import pytest
import torch

from src.metrics import SegmentationIoU


def numpy_miou(preds: list[np.ndarray], labels: list[np.ndarray], k: int, ignore: int = 255):
    """mmseg IoUMetric written independently: per-image histograms summed over the dataset."""
    inter, area_p, area_l = np.zeros(k), np.zeros(k), np.zeros(k)
    for p, lab in zip(preds, labels):
        keep = lab != ignore
        p, lab = p[keep], lab[keep]
        inter += np.histogram(p[p == lab], bins=k, range=(0, k))[0]
        area_p += np.histogram(p, bins=k, range=(0, k))[0]
        area_l += np.histogram(lab, bins=k, range=(0, k))[0]
    union = area_p + area_l - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return iou, round(float(np.nanmean(iou)) * 100, 2)


def test_matches_numpy_reference_with_ignore_and_absent_classes():
    rng = np.random.default_rng(0)
    k = 19
    preds, labels = [], []
    for _ in range(5):
        lab = rng.integers(0, 12, size=(37, 53))  # classes 12..18 absent from labels
        lab[rng.random(lab.shape) < 0.2] = 255
        pred = rng.integers(0, 10, size=lab.shape)  # 10..18 absent from predictions too → 12..18 have no union
        preds.append(pred)
        labels.append(lab)
    metric = SegmentationIoU(k)
    for p, lab in zip(preds, labels):
        metric.update(torch.from_numpy(p)[None], torch.from_numpy(lab)[None])
    out = metric.compute()
    ref_iou, ref_miou = numpy_miou(preds, labels, k)
    np.testing.assert_allclose(out["IoU"].numpy() / 100, ref_iou, equal_nan=True, rtol=1e-12)
    assert torch.isnan(out["IoU"][12:]).all()
    assert float(out["mIoU"]) == pytest.approx(ref_miou, abs=1e-9)


def test_dataset_level_not_per_image_mean():
    metric = SegmentationIoU(2)
    metric.update(torch.tensor([[[0, 0, 0, 1]]]), torch.tensor([[[0, 0, 0, 0]]]))  # IoU0 = 3/4, IoU1 = 0/1
    metric.update(torch.tensor([[[1]]]), torch.tensor([[[1]]]))  # IoU1 alone = 1
    out = metric.compute()
    assert out["IoU"].tolist() == pytest.approx([75.0, 50.0])
    assert float(out["mIoU"]) == 62.5


def test_bad_labels_are_rejected():
    metric = SegmentationIoU(3)
    with pytest.raises(ValueError, match="label values"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 3, 2, dtype=torch.long))
