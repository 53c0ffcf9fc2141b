"""MiniDG renderer, styles, on-disk layout and the shipped VFMs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from src.data.checks import ENTRIES, check_entry
from src.data.datasets import ACDCDataset, CityscapesDataset, read_image, read_raw_label
from src.data.labels import IGNORE_INDEX, LABEL_ID_TO_TRAIN_ID, NUM_CLASSES
from src.minidg.dataset import load_pretrain_set, read_depth, write_minidg, write_pretrain_set
from src.minidg.render import MAX_DEPTH, RENDERED_CLASSES, ROAD, SKY, render_seed
from src.minidg.styles import STYLES, TARGET_STYLES, haze, stylize, to_uint8

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "minidg"


@pytest.fixture(scope="module")
def renders():
    return [render_seed((7, i)) for i in range(6)]


def test_labels_and_depth_are_consistent(renders) -> None:
    for r in renders:
        valid = set(range(NUM_CLASSES)) | {IGNORE_INDEX}
        assert set(np.unique(r.label).tolist()) <= set(RENDERED_CLASSES) <= valid
        sky = r.label == SKY
        assert sky.any() and (~sky).any() and np.array_equal(r.sky, sky)
        assert np.all(r.depth[sky] == MAX_DEPTH)  # the sky is the farthest thing in the image
        assert np.all(r.depth[~sky] <= MAX_DEPTH) and np.all(r.depth > 0)
        assert r.depth[~sky].mean() < 0.5 * MAX_DEPTH
        road = r.label == ROAD
        assert road.any()
        assert np.all(r.ray_up[road] < 0)  # road lies below the horizon ...
        assert np.allclose(r.points[road][:, 1], 0, atol=1e-3)  # ... on the ground plane
        assert np.all(r.ray_up[sky] >= 0)  # every downward ray hits something


def test_fog_is_monotone_in_depth() -> None:
    depth = np.linspace(1, MAX_DEPTH, 50, dtype=np.float32)[None, :].repeat(4, 0)
    clear = np.full((4, 50, 3), 0.2, np.float32)
    airlight = 0.8
    fogged = haze(clear, depth, beta=0.08, airlight=airlight)
    gap = np.abs(fogged - airlight)[0, :, 0]
    assert np.all(np.diff(gap) < 0)  # farther pixel -> closer to the airlight
    assert gap[-1] < 1e-3 and np.isclose(gap[0], 0.6 * np.exp(-0.08), atol=1e-5)


def test_styles_keep_shapes_and_range(renders) -> None:
    small = render_seed(3, size=(32, 48))
    for r in (renders[0], small):
        for style in STYLES:
            out = stylize(r, style, 5)
            assert out.shape == r.rgb.shape and out.dtype == np.float32
            assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert small.label.shape == small.depth.shape == (32, 48)


def test_night_is_darker_but_not_black(renders) -> None:
    day = np.mean([stylize(r, "day", 0).mean() for r in renders])
    night = np.mean([stylize(r, "night", 0).mean() for r in renders])
    assert 0.1 * day < night < 0.9 * day


def test_determinism_by_seed() -> None:
    a, b, c = render_seed((1, 2)), render_seed((1, 2)), render_seed((1, 3))
    for field in ("rgb", "label", "depth"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.label, c.label)
    for style in STYLES:
        assert np.array_equal(stylize(a, style, 4), stylize(b, style, 4))
    assert not np.array_equal(stylize(a, "night", 4), stylize(a, "night", 5))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("minidg")
    write_minidg(root, num_train=3, num_test=2, seed=0, workers=1)
    return root


def test_tree_has_the_cityscapes_and_acdc_layout(tree: Path) -> None:
    expected = {"minidg.json"}
    for split, city, indices in (("train", "minidg00", range(3)), ("val", "minidgval00", range(2))):
        for i in indices:
            stem = f"{city}_{i:06d}_000019"
            expected |= {
                f"cityscapes/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
                f"cityscapes/gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png",
                f"cityscapes/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png",
                f"cityscapes/depth/{split}/{city}/{stem}_depth.png",
            }
    for cond in ("night", "fog", "snow"):
        for i in range(2):
            stem = f"MDG0000_frame_{i:06d}"
            expected |= {
                f"acdc/rgb_anon/{cond}/val/MDG0000/{stem}_rgb_anon.png",
                f"acdc/gt/{cond}/val/MDG0000/{stem}_gt_labelTrainIds.png",
                f"acdc/gt/{cond}/val/MDG0000/{stem}_gt_labelIds.png",
                f"acdc/depth/{cond}/val/MDG0000/{stem}_depth.png",
            }
    found = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
    assert found == expected


def test_tree_contents_match_the_renders(tree: Path) -> None:
    city, stem = "minidgval00", "minidgval00_000001_000019"
    train_ids = read_raw_label(tree / f"cityscapes/gtFine/val/{city}/{stem}_gtFine_labelTrainIds.png")
    label_ids = read_raw_label(tree / f"cityscapes/gtFine/val/{city}/{stem}_gtFine_labelIds.png")
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[list(LABEL_ID_TO_TRAIN_ID)] = list(LABEL_ID_TO_TRAIN_ID.values())
    assert np.array_equal(lut[label_ids], train_ids)
    acdc = read_raw_label(tree / "acdc/gt/fog/val/MDG0000/MDG0000_frame_000001_gt_labelTrainIds.png")
    assert np.array_equal(acdc, train_ids)  # the targets are the same scenes as the day val split
    depth = read_depth(tree / f"cityscapes/depth/val/{city}/{stem}_depth.png")
    assert depth.shape == train_ids.shape and np.all(depth[train_ids == SKY] == MAX_DEPTH)
    image = read_image(tree / "acdc/rgb_anon/night/val/MDG0000/MDG0000_frame_000001_rgb_anon.png")
    assert image.shape == (*train_ids.shape, 3)


def test_tree_is_read_by_the_datasets_and_passes_the_layout_checks(tree: Path) -> None:
    assert len(CityscapesDataset(tree / "cityscapes", "train")) == 3
    val = CityscapesDataset(tree / "cityscapes", "val")
    item = val[0]
    assert item["image"].shape[0] == 3 and set(item["label"].unique().tolist()) <= set(RENDERED_CLASSES)
    for cond in TARGET_STYLES:
        assert len(ACDCDataset(tree / "acdc", "val", condition=cond)) == 2
    checked = [e for e in ENTRIES if e.dataset == "cityscapes" or e.split in {f"{c}/val" for c in TARGET_STYLES}]
    assert len(checked) == 5
    for entry in checked:
        result = check_entry(entry, tree, full=True)
        assert not result.errors, result.format()


def test_writer_skips_an_up_to_date_tree(tree: Path) -> None:
    path = tree / "cityscapes/leftImg8bit/train/minidg00/minidg00_000000_000019_leftImg8bit.png"
    before = path.stat().st_mtime_ns
    write_minidg(tree, num_train=3, num_test=2, seed=0, workers=1)
    assert path.stat().st_mtime_ns == before


def test_pretrain_set_round_trip(tmp_path: Path) -> None:
    write_pretrain_set(tmp_path, num_scenes=2, stylings=2, seed=0, workers=1)
    data = load_pretrain_set(tmp_path)
    assert data.images.shape == (4, 64, 128, 3) and data.depth.shape == (2, 64, 128)
    assert data.scene.tolist() == [0, 0, 1, 1]
    assert not np.array_equal(data.images[0], data.images[1])  # two stylings of one scene


@pytest.mark.skipif(not (ASSETS / "visual_vit" / "model.safetensors").is_file(), reason="VFM assets not made")
def test_saved_vfms_load_as_user_weights_and_the_backbones_read_them_unchanged() -> None:
    """The plain timm and HF loads of assets/minidg/README.md work, and the project's backbones built from the MiniDG
    configs read every block's tokens exactly as they do: timm's own block loop, and HF DINOv2 on the bilinear
    112x224 resize that gives the visual 8x16 grid."""
    import timm
    import torch.nn.functional as F
    from omegaconf import OmegaConf
    from transformers import DepthAnythingForDepthEstimation

    from src.minidg.vfms import VISUAL_CONFIG, depth_block_tokens, depth_vfm, normalize, visual_block_tokens, visual_vfm

    x = normalize(np.stack([to_uint8(stylize(render_seed(i), style, i)) for i, style in enumerate(("day", "fog"))]))
    cfg = OmegaConf.load(VISUAL_CONFIG)
    kwargs = dict(img_size=tuple(cfg.img_size), patch_size=cfg.patch_size, num_classes=0, **cfg.model_kwargs)
    file = str(ASSETS / "visual_vit" / "model.safetensors")
    vit = timm.create_model(cfg.model_name, pretrained=True, pretrained_cfg_overlay=dict(file=file), **kwargs).eval()
    fresh = timm.create_model(cfg.model_name, pretrained=False, **kwargs)
    assert not torch.equal(vit.pos_embed, fresh.pos_embed)  # the weights were loaded, not initialised
    depth = DepthAnythingForDepthEstimation.from_pretrained(str(ASSETS / "depth_anything"), local_files_only=True)
    with torch.no_grad():
        tokens, plain_visual = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x)))), []
        for block in vit.blocks:
            tokens = block(tokens)
            plain_visual.append(tokens[:, vit.num_prefix_tokens :])
        resized = F.interpolate(x, size=(112, 224), mode="bilinear", align_corners=False)
        out = depth.eval()(pixel_values=resized, output_hidden_states=True)
        visual = visual_vfm(file)
        ours_visual = visual_block_tokens(visual, x)
        ours_depth = depth_block_tokens(depth_vfm(ASSETS / "depth_anything"), x, visual.grid_size(64, 128))
    assert ours_visual.shape == (2, 6, 8 * 16, 128) and torch.isfinite(ours_visual).all()
    assert torch.equal(ours_visual, torch.stack(plain_visual, 1))
    assert len(out.hidden_states) == 7 and ours_depth.shape == (2, 6, 8 * 16, 128)
    assert torch.equal(ours_depth, torch.stack([h[:, 1:] for h in out.hidden_states[1:]], 1))
    assert out.predicted_depth.shape == (2, 112, 224) and torch.isfinite(out.predicted_depth).all()


def test_depth_rescale_keeps_the_depth_output_and_matches_the_visual_token_scale(tmp_path: Path) -> None:
    import json

    import safetensors.torch

    from src.minidg.pretrain import match_depth_scale
    from src.minidg.vfms import depth_block_tokens, depth_output, depth_vfm, normalize, visual_block_tokens, visual_vfm

    torch.manual_seed(0)
    visual = visual_vfm(None)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in visual.model.state_dict().items()}, str(tmp_path / "v.safetensors")
    )
    depth = depth_vfm(None)
    with torch.no_grad():  # a residual stream 5x larger than its init, as training left MiniDG's depth model
        for layer in depth.model.backbone.encoder.layer:
            layer.layer_scale1.lambda1.mul_(5.0)
            layer.layer_scale2.lambda1.mul_(5.0)
    depth.model.save_pretrained(str(tmp_path / "depth"))
    images = np.stack([to_uint8(stylize(render_seed(i), "day", i)) for i in range(3)])
    x = normalize(images)
    grid = visual.grid_size(*x.shape[-2:])

    def rms(t: torch.Tensor) -> float:
        return t.square().mean().sqrt().item()

    with torch.no_grad():
        before = depth_output(depth, x, grid).predicted_depth
        ratio = rms(depth_block_tokens(depth, x, grid)) / rms(visual_block_tokens(visual, x))
    alpha = match_depth_scale(tmp_path / "depth", tmp_path / "v.safetensors", images)
    assert alpha == pytest.approx(1 / ratio, rel=1e-4)
    rescaled = depth_vfm(tmp_path / "depth")
    with torch.no_grad():
        after = depth_output(rescaled, x, grid).predicted_depth
        tokens = depth_block_tokens(rescaled, x, grid)
        assert rms(tokens) == pytest.approx(rms(visual_block_tokens(visual, x)), rel=1e-4)
        reference = depth_block_tokens(depth, x, grid)
    torch.testing.assert_close(tokens, alpha * reference, rtol=1e-4, atol=1e-4)  # every block scaled by α
    torch.testing.assert_close(after, before, rtol=0, atol=1e-3 * before.abs().max().item())  # same depth maps
    assert json.loads((tmp_path / "depth" / "pretrain_log.json").read_text())["residual_scale"] == pytest.approx(
        alpha, rel=1e-5
    )
    assert match_depth_scale(tmp_path / "depth", tmp_path / "v.safetensors", images) == pytest.approx(1.0, rel=1e-4)
