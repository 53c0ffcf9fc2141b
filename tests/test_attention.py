"""src.attention: the recorded token attention is the adapter's own on the tokens the backbone hands it, the pictures
show the dominant token of each patch in its colour, the stability statistics are exact on identical pairs, and the
command (tiny random-init runs of the smoke model) writes its figure and table and refuses what it cannot do."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from src.attention import (
    AttentionError,
    LayerAttention,
    Recorded,
    js_divergence,
    layer_pictures,
    layer_strip,
    nice_ceiling,
    record_attention,
    run_attention,
    stability,
    token_picture,
)
from src.minidg.dataset import test_scene as render_test_scene
from src.minidg.vfms import normalize
from src.utils.checkpoint import atomic_torch_save
from src.utils.instantiate import build_module
from src.utils.visualize import token_palette
from tests.conftest import compose_config


def _sharpen(segmenter: torch.nn.Module) -> None:
    """Make the random-init attention far from uniform (its tokens ×300) and the adapter's edits large (s = 1), so
    that attention taken on the wrong tokens (after the edit, or of another layer) would differ."""
    adapter = segmenter.token_adapter
    with torch.no_grad():
        adapter.learnable_tokens_b.mul_(300.0)
        adapter.scale.fill_(1.0)


@pytest.fixture(scope="module")
def depthforge(tmp_path_factory) -> torch.nn.Module:
    """The smoke experiment's DepthForge segmenter (tiny random-init ViT + depth VFM, 4 layers), sharpened."""
    cfg = compose_config(["experiment=smoke", "ablation=depthforge"], tmp_path_factory.mktemp("df"))
    torch.manual_seed(0)
    segmenter = build_module(cfg).segmenter.eval()
    _sharpen(segmenter)
    return segmenter


def _scenes(n: int, domain: str = "day") -> torch.Tensor:
    return normalize(np.stack([render_test_scene(0, i)[1][domain] for i in range(n)]))


def test_recorded_attention_is_the_adapters_on_the_tokens_the_backbone_hands_it(depthforge) -> None:
    """The blocks run by hand, the adapter applied after each as the backbone applies it: at every layer the
    recorded map equals adapter.attention() on the patch tokens *before* that layer's edit, and not after it."""
    images = _scenes(2)
    recorded = record_attention(depthforge, images)
    vit, adapter = depthforge.visual_backbone.model, depthforge.token_adapter
    prefix = vit.num_prefix_tokens
    with torch.no_grad():
        depth = depthforge.depth_tokens(images)
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
        grid = (images.shape[-2] // 16, images.shape[-1] // 16)
        for layer, block in enumerate(vit.blocks):
            x = block(x)
            patches = x[:, prefix:]
            direct = adapter.attention(patches, layer, depth[layer])
            edited = adapter(patches, layer, depth[layer], grid)
            after = adapter.attention(edited, layer, depth[layer])
            torch.testing.assert_close(recorded.weights[layer], direct, rtol=0, atol=1e-6)
            assert (recorded.weights[layer] - after).abs().max() > 1e-3  # the test tells the two apart
            x = torch.cat([x[:, :prefix], edited], dim=1)
    assert recorded.grid == grid == (4, 8)
    assert recorded.weights[0].shape == (2, 32, adapter.num_tokens)
    chosen = record_attention(depthforge, images, layers=[-1, 1])
    assert list(chosen.weights) == [1, 3] and torch.equal(chosen.weights[3], recorded.weights[3])
    with pytest.raises(AttentionError, match=r"layers \[4\] are not layers of this visual VFM \(4 layers\)"):
        record_attention(depthforge, images, layers=[4])


def test_the_dominant_token_picture_colours_each_patch_with_its_argmax_token() -> None:
    weights = torch.full((1, 6, 5), 0.1)  # a 2 x 3 grid, 5 tokens, one clear winner per patch
    winners = [4, 0, 2, 3, 3, 1]
    for n, m in enumerate(winners):
        weights[0, n, m] = 0.6
    recorded = Recorded(LayerAttention({0: weights, 2: weights.flip(-1)}, (2, 3)), (28, 48), 16)
    palette = token_palette(5)
    # the grid covers 32 x 48 pixels, the image 28 x 48: cropped, then drawn at 2x (56 x 96)
    first, flipped = layer_pictures(recorded, (56, 96))
    assert first.shape == (56, 96, 3)
    for n, m in enumerate(winners):
        r, c = divmod(n, 3)
        y, x = r * 32 + 8, c * 32 + 16  # inside patch (r, c): 32 pixels per patch at 2x
        np.testing.assert_array_equal(first[y, x], palette[m], err_msg=f"patch {r, c}")
        np.testing.assert_array_equal(flipped[y, x], palette[4 - m], err_msg=f"patch {r, c}")
    assert (first[-1] == first[48]).all()  # the last row of patches is cut to 12 of its 16 pixels, drawn at 2x
    one = token_picture(np.array([[3]]), 5, 16, (16, 16), (16, 16))
    assert (one == palette[3]).all()


def test_layer_strip_and_pictures_of_a_real_model(depthforge) -> None:
    """The W&B strip: one panel per layer, each patch of each panel in the colour of its most attended token."""
    image = _scenes(1, "fog")
    recorded = Recorded(record_attention(depthforge, image), (64, 128), 16)
    pictures = layer_pictures(recorded, (64, 128))
    palette = token_palette(depthforge.token_adapter.num_tokens)
    for layer, picture in enumerate(pictures):
        ids = recorded.attention.weights[layer][0].argmax(-1).reshape(4, 8)
        for r, c in ((0, 0), (1, 5), (3, 7)):
            np.testing.assert_array_equal(picture[r * 16 + 7, c * 16 + 9], palette[int(ids[r, c])])
    strip = layer_strip(depthforge, image)
    assert strip.shape[0] > 64 and strip.shape[1] >= 4 * 128  # 4 panels under their titles
    assert len({int(v) for w in recorded.attention.weights.values() for v in w.argmax(-1).unique()}) > 1


def test_stability_of_identical_images_is_exact_and_of_shifted_ones_lower(depthforge) -> None:
    day = _scenes(2)
    same = stability(record_attention(depthforge, day), record_attention(depthforge, day.clone()))
    assert all(s == {"agreement": 1.0, "js": 0.0} for s in same.values())
    shifted = stability(record_attention(depthforge, day), record_attention(depthforge, _scenes(2, "night")))
    assert all(s["agreement"] < 1.0 and s["js"] > 0.0 for s in shifted.values())
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    q = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    torch.testing.assert_close(js_divergence(p, q), torch.tensor([1.0, 0.0], dtype=torch.float64))  # bits
    assert [nice_ceiling(v) for v in (0.0, 0.0013, 0.02, 0.3, 1.0)] == pytest.approx([1.0, 0.002, 0.02, 0.5, 1.0])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Run directories as src.train leaves them (.hydra/config.yaml, checkpoints/last.ckpt) of the smoke model with
    REIN, DepthForge and FADA, at their random init (the checkpoint of step 0)."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for ablation in ("rein", "depthforge", "fada"):
        run = root / ablation
        cfg = compose_config(["experiment=smoke", f"ablation={ablation}", f"paths.data_dir={root / 'data'}"], run)
        (run / ".hydra").mkdir(parents=True)
        OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
        if ablation != "fada":
            torch.manual_seed(cfg.seed)
            module = build_module(cfg)
            checkpoint: dict = {}
            module.on_save_checkpoint(checkpoint)
            atomic_torch_save(checkpoint, run / "checkpoints" / "last.ckpt")
        out[ablation] = run
    return out


def _command(runs: dict[str, Path], out: Path, *overrides: str):
    """The config of ``python -m src.attention 'runs={rein: …, depthforge: …}' output_dir=out <overrides>``."""
    labelled = f"runs={{rein: {runs['rein']}, depthforge: {runs['depthforge']}}}"
    return compose_config([labelled, f"output_dir={out}", *overrides], out.parent / "hydra", config_name="attention")


def test_the_command_writes_the_figure_and_the_stability_table(runs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    written = run_attention(_command(runs, out, "minidg.scenes=3", "show=1", "minidg.figure_domains=[day,fog]"))
    assert sorted(p.name for p in written.values()) == [
        "attention.png",
        "attention_stability.json",
        "attention_stability.md",
        "attention_stability.png",
    ]
    figure = cv2.imread(str(out / "attention.png"))
    assert figure.shape[0] > 4 * 128 and figure.shape[1] > 5 * 256  # 4 rows (2 methods x day, fog), 5 columns
    record = json.loads((out / "attention_stability.json").read_text())
    assert (
        record["pairs"] == 3 and record["layers"] == [1, 2, 3, 4] and list(record["methods"]) == ["rein", "depthforge"]
    )
    for stats in record["methods"].values():
        assert list(stats["domains"]) == ["night", "fog", "snow"]
        assert all(1 / 16 <= v <= 1 for v in stats["peak"])
        for pair in stats["domains"].values():
            assert all(0 <= v <= 1 for v in pair["agreement"]) and all(0 <= v <= 1 for v in pair["js"])
    table = (out / "attention_stability.md").read_text()
    assert "| depthforge | same dominant token, day vs fog |" in table and table.count("\n| rein |") == 7
    agreement = record["methods"]["rein"]["domains"]["fog"]["agreement"][0]
    assert f"| rein | same dominant token, day vs fog | {agreement:.2f} |" in table
    with pytest.raises(AttentionError, match="already holds attention.png, attention_stability.md"):
        run_attention(_command(runs, out, "minidg.scenes=3"))
    written = run_attention(_command(runs, out, "minidg.scenes=2", "overwrite=true", "token=3", "layers=[2,4]"))
    assert json.loads((out / "attention_stability.json").read_text())["layers"] == [2, 4]
    run_attention(_command(runs, out, "minidg.scenes=1", "name=fig1b"))
    assert (out / "fig1b.png").is_file() and (out / "fig1b_stability.md").is_file()


def test_paired_folders_give_the_stability_of_identical_pairs_exactly(runs, tmp_path: Path) -> None:
    day, same = tmp_path / "day", tmp_path / "same"
    for folder in (day, same):
        folder.mkdir()
        for i in range(2):
            cv2.imwrite(str(folder / f"scene{i}.png"), render_test_scene(0, i)[1]["day"][..., ::-1])
    out = tmp_path / "out"
    run_attention(_command(runs, out, f"images=[{day}]", f"shifted=[{same}]"))
    record = json.loads((out / "attention_stability.json").read_text())
    assert record["pairs"] == 2 and record["reference"] == "reference"
    for stats in record["methods"].values():
        assert stats["domains"]["shifted"]["agreement"] == [1.0] * 4
        assert stats["domains"]["shifted"]["js"] == [0.0] * 4


def test_what_cannot_be_done_is_refused_before_anything_is_written(runs, tmp_path: Path) -> None:
    images, shifted = tmp_path / "images", tmp_path / "shifted"
    for folder, sizes in ((images, [(64, 128), (64, 128)]), (shifted, [(64, 128), (32, 64)])):
        folder.mkdir()
        for i, size in enumerate(sizes):
            cv2.imwrite(str(folder / f"{i}.png"), np.zeros((*size, 3), np.uint8))
    out = tmp_path / "out"
    fada = compose_config(
        [f"runs={{rein: {runs['rein']}, fada: {runs['fada']}}}", f"output_dir={out}", "minidg.scenes=1"],
        tmp_path / "hydra",
        config_name="attention",
    )
    with pytest.raises(AttentionError, match=r"runs.fada=.* \(FADAAdapter\) has no attention\(tokens, layer, depth\)"):
        run_attention(fada)
    with pytest.raises(AttentionError, match=r"paired images differ in size: .*1.png is 128x64, .*1.png is 64x32"):
        run_attention(_command(runs, out, f"images=[{images}]", f"shifted=[{shifted}]"))
    with pytest.raises(AttentionError, match=r"images has 2 image\(s\) and shifted 1"):
        run_attention(_command(runs, out, f"images=[{images}]", f"shifted=[{shifted / '0.png'}]"))
    with pytest.raises(AttentionError, match=r"output_dir=.* lies inside the input folder"):
        run_attention(_command(runs, images / "out", f"images=[{images}]"))
    with pytest.raises(AttentionError, match=r"images and minidg.scenes are both set"):
        run_attention(_command(runs, out, f"images=[{images}]", "minidg.scenes=2"))
    with pytest.raises(AttentionError, match=r"layers=\[5\]: this visual VFM has layers 1..4"):
        run_attention(_command(runs, out, "minidg.scenes=1", "layers=[5]"))
    assert not out.exists()


def test_a_target_domain_of_the_runs_data_is_read_through_its_dataset(runs, tmp_path: Path) -> None:
    from src.data.synthetic import write_dataset

    data = tmp_path / "data"
    write_dataset("acdc", data / "smoke" / "acdc", num_images=3, size=(128, 64))
    out = tmp_path / "out"
    written = run_attention(_command(runs, out, "domain=fog", "show=2", f"data_dir={data}"))
    assert list(written) == ["figure"]  # no pairs, no stability table
    figure = cv2.imread(str(out / "attention.png"))
    assert figure.shape[0] > 4 * 128  # 2 images x 2 methods
    with pytest.raises(AttentionError, match="lies inside the input folder"):
        run_attention(_command(runs, data / "smoke" / "acdc" / "out", "domain=fog", f"data_dir={data}"))
    with pytest.raises(AttentionError, match="domain=dusk is not a target of runs.rein; its targets are snow, night"):
        run_attention(_command(runs, out, "domain=dusk", f"data_dir={data}"))
