"""Mask2FormerHead against docs/method.md §5: predictions, init, query modes, losses, semantic map, full-size count."""

import pytest
import torch
import torch.nn.functional as F
from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss, Mask2FormerTransformerModule

from src.models.heads.mask2former import Mask2FormerHead
from src.models.parts import ShapeSpec

TINY = dict(
    hidden_dim=32,
    feature_size=32,
    mask_feature_size=32,
    encoder_layers=1,
    decoder_layers=3,
    num_attention_heads=2,
    dim_feedforward=64,
    encoder_feedforward_dim=64,
    num_queries=10,
    train_num_points=256,
    replace_query_feat=True,
)
IN_CHANNELS, BATCH, CROP, K = 64, 2, 64, 19


def levels(channels: int) -> list[ShapeSpec]:
    """Four maps of one width at strides 4/8/16/32, as the visual backbone states them."""
    return [ShapeSpec(channels, stride) for stride in (4, 8, 16, 32)]


def tiny_head(**overrides) -> Mask2FormerHead:
    torch.manual_seed(0)
    return Mask2FormerHead(levels(IN_CHANNELS), **{**TINY, **overrides})


@pytest.fixture
def maps() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(BATCH, IN_CHANNELS, CROP // s, CROP // s) for s in (4, 8, 16, 32)]


@pytest.fixture
def queries() -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(TINY["num_queries"], TINY["hidden_dim"], requires_grad=True)


@pytest.fixture
def labels() -> torch.Tensor:
    torch.manual_seed(3)
    labels = torch.randint(0, 5, (BATCH, CROP, CROP))
    labels[:, :8] = 255
    return labels


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("decoder_layers", [2, 3])
def test_one_prediction_per_decoder_layer_setting(decoder_layers, maps, queries):
    """HF's convention: decoder_layers - 1 layers + the raw-query prediction = decoder_layers predictions."""
    head = tiny_head(decoder_layers=decoder_layers)
    assert len(head.transformer_module.decoder.layers) == decoder_layers - 1
    out = head(maps, queries)
    assert len(out.class_logits) == len(out.mask_logits) == decoder_layers
    for classes, masks in zip(out.class_logits, out.mask_logits):
        assert classes.shape == (BATCH, TINY["num_queries"], K + 1)
        assert masks.shape == (BATCH, TINY["num_queries"], CROP // 4, CROP // 4)


def test_every_parameter_is_initialised():
    head = tiny_head()
    for name, p in head.named_parameters():
        assert torch.isfinite(p).all() and p.abs().max() < 10, name
    for level_embed in (head.pixel_decoder.level_embed, head.transformer_module.level_embed.weight):
        assert 0.6 < level_embed.std() < 1.4 and level_embed.mean().abs() < 0.4  # N(0, 1), not garbage or zeros
    msda = head.pixel_decoder.encoder.layers[0].self_attn
    assert (msda.sampling_offsets.weight == 0).all() and (msda.attention_weights.weight == 0).all()
    assert msda.sampling_offsets.bias.abs().max() == 4  # Deformable-DETR grid: ring i at distance i + 1
    xavier_std = (2 / (2 * TINY["hidden_dim"])) ** 0.5
    q_proj = head.transformer_module.decoder.layers[0].self_attn.q_proj.weight
    assert 0.8 * xavier_std < q_proj.std() < 1.2 * xavier_std
    default_bound = TINY["hidden_dim"] ** -0.5  # PyTorch's default Linear init: U(±1/√fan_in)
    for linear in (head.class_predictor, head.querys2feat, head.transformer_module.decoder.mask_predictor):
        for p in linear.parameters():
            assert p.abs().max() <= default_bound and p.std() > default_bound / 3


def test_token_queries_replace_learned_ones(maps, queries):
    head = tiny_head()
    names = [name for name, _ in head.named_parameters()]
    assert "querys2feat.weight" in names
    assert not [n for n in names if "query_embed" in n or "query_feat" in n or "queries_" in n]
    out = head(maps, queries)
    other = head(maps, queries.detach() + 1.0)
    assert not torch.allclose(out.mask_logits[-1], other.mask_logits[-1])
    (out.class_logits[-1].sum() + out.mask_logits[-1].sum()).backward()
    assert queries.grad is not None and queries.grad.abs().sum() > 0
    assert head.querys2feat.weight.grad.abs().sum() > 0


def test_learned_queries(maps):
    head = tiny_head(replace_query_feat=False)
    names = [name for name, _ in head.named_parameters()]
    assert {"query_embed.weight", "query_feat.weight"} <= set(names)
    assert not [n for n in names if "querys2feat" in n or "queries_" in n]
    out = head(maps)
    out.mask_logits[-1].sum().backward()
    assert head.query_embed.weight.grad.abs().sum() > 0 and head.query_feat.weight.grad.abs().sum() > 0


def test_query_mode_mismatch_is_an_error(maps, queries):
    with pytest.raises(ValueError, match="needs adapter queries"):
        tiny_head()(maps)
    with pytest.raises(ValueError, match="needs adapter queries"):
        tiny_head()(maps, queries[:3])
    with pytest.raises(ValueError, match="learned queries"):
        tiny_head(replace_query_feat=False)(maps, queries)


@torch.no_grad()
def test_transformer_module_matches_hf_forward(maps):
    """Our query-input forward equals HF's own forward when fed HF's learned-query embeddings."""
    head = tiny_head(replace_query_feat=False)
    hf = Mask2FormerTransformerModule(in_features=head.config.feature_size, config=head.config)
    state = head.transformer_module.state_dict()
    state.update(
        {"queries_embedder.weight": head.query_embed.weight, "queries_features.weight": head.query_feat.weight}
    )
    hf.load_state_dict(state)
    pixel = head.pixel_decoder(maps)
    expected = hf(list(pixel.multi_scale_features), pixel.mask_features)
    out = head(maps)
    for ours, theirs in zip(out.mask_logits, expected.masks_queries_logits, strict=True):
        torch.testing.assert_close(ours, theirs)
    for ours, hidden in zip(out.class_logits, expected.intermediate_hidden_states, strict=True):
        torch.testing.assert_close(ours, head.class_predictor(hidden.transpose(0, 1)))


def test_loss_applies_weights_to_hf_criterion(maps, queries, labels):
    head = tiny_head()
    out = head(maps, queries)
    torch.manual_seed(4)
    losses = head.loss(out, labels)

    mask_labels = [torch.stack([(label == c).float() for c in label.unique() if c != 255]) for label in labels]
    class_labels = [label.unique()[label.unique() != 255] for label in labels]
    criterion = Mask2FormerLoss(head.config, weight_dict={})
    auxiliary = [
        {"masks_queries_logits": m, "class_queries_logits": c}
        for m, c in zip(out.mask_logits[:-1], out.class_logits[:-1])
    ]
    torch.manual_seed(4)
    raw = criterion(out.mask_logits[-1], out.class_logits[-1], mask_labels, class_labels, auxiliary)

    assert set(losses) == set(raw) | {"loss"} and len(raw) == 3 * TINY["decoder_layers"]
    weights = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    for name, value in raw.items():
        weight = next(w for prefix, w in weights.items() if name.startswith(prefix))
        torch.testing.assert_close(losses[name], weight * value)
    torch.testing.assert_close(losses["loss"], sum(v for n, v in losses.items() if n != "loss"))


def test_loss_backward_reaches_every_parameter(maps, queries, labels):
    head = tiny_head()
    losses = head.loss(head(maps, queries), labels)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert queries.grad.abs().sum() > 0


@pytest.mark.parametrize("ignored_images", [1, BATCH])
def test_all_ignore_images(ignored_images, maps, queries, labels):
    labels[:ignored_images] = 255
    head = tiny_head()
    losses = head.loss(head(maps, queries), labels)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert torch.isfinite(queries.grad).all()


def test_labels_outside_the_classes_are_an_error(maps, queries, labels):
    head = tiny_head()
    labels[0, -1, -1] = K
    with pytest.raises(ValueError, match="labels must lie"):
        head.loss(head(maps, queries), labels)


def test_targets_are_one_mask_per_present_class_in_class_order(labels):
    """The matcher's targets equal the per-image `unique()` reference: classes present (ignore excluded) in
    increasing order, one binary mask each; an image with only some classes gets only those; negatives are refused."""
    head = tiny_head()
    labels[1] = torch.where(labels[1] == 2, 255, labels[1])  # image 1 lacks class 2
    labels = torch.cat([labels, torch.full_like(labels[:1], 255)])  # image 2 is all ignore
    masks, classes = head._targets(labels)
    for label, got_masks, got_classes in zip(labels, masks, classes):
        expected = label.unique()
        expected = expected[expected != 255]
        assert torch.equal(got_classes, expected) and got_classes.dtype == torch.long
        assert torch.equal(got_masks, (label == expected[:, None, None]).float())
    assert 2 not in classes[1].tolist() and classes[2].numel() == 0 and masks[2].shape == (0, CROP, CROP)
    labels[0, 0, 0] = -1
    with pytest.raises(ValueError, match="labels must lie"):
        head._targets(labels)


def test_semantic_map_is_the_probability_formula(maps, queries):
    head = tiny_head()
    with torch.no_grad():
        out = head(maps, queries)
        seg = head.semantic_map(out, (CROP, CROP))
    class_probs = out.class_logits[-1].softmax(-1)[..., :K]  # (B, Q, K)
    masks = F.interpolate(out.mask_logits[-1], size=(CROP, CROP), mode="bilinear", align_corners=False).sigmoid()
    expected = (class_probs[..., None, None] * masks[:, :, None]).sum(1)
    assert seg.shape == (BATCH, K, CROP, CROP)
    torch.testing.assert_close(seg, expected)
    assert (seg >= 0).all() and (seg.sum(1) <= TINY["num_queries"]).all()


def test_bf16_autocast(maps, queries, labels):
    head = tiny_head()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(maps, queries)
        losses = head.loss(out, labels)
        seg = head.semantic_map(out, (CROP, CROP))
    assert out.mask_logits[-1].dtype == torch.bfloat16
    assert losses["loss"].dtype == torch.float32 and torch.isfinite(losses["loss"])
    assert seg.dtype == torch.float32
    losses["loss"].backward()
    assert torch.isfinite(queries.grad).all()


def test_full_size_parameter_count():
    """Method §5.2: pixel decoder 6,101,440 + decoder 14,209,280 + level_embed/cls/mask MLP/querys2feat 269,076."""
    with torch.device("meta"):
        head = Mask2FormerHead(levels(1024), replace_query_feat=True)
        learned = Mask2FormerHead(levels(1024))
    decoder = head.transformer_module.decoder
    decoder_layers = num_params(decoder) - num_params(decoder.mask_predictor)
    assert num_params(head.pixel_decoder) == 6_101_440
    assert decoder_layers == 14_209_280
    assert num_params(head) - num_params(head.pixel_decoder) - decoder_layers == 269_076
    assert num_params(head) == 20_579_796 and abs(num_params(head) / 20.58e6 - 1) < 0.01
    assert num_params(learned) == 20_579_796 - 65_792 + 2 * 100 * 256
    assert len(decoder.layers) == 9


def test_mask_count_is_averaged_over_ranks(monkeypatch):
    from src.models.heads.mask2former import DistributedMask2FormerLoss

    labels = [torch.tensor([0, 3]), torch.tensor([1])]
    loss = DistributedMask2FormerLoss.__new__(DistributedMask2FormerLoss)
    assert float(loss.get_num_masks(labels, torch.device("cpu"))) == 3.0
    assert float(loss.get_num_masks([torch.tensor([], dtype=torch.long)], torch.device("cpu"))) == 1.0
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.add_(5.0))  # the other rank holds 5 masks
    assert float(loss.get_num_masks(labels, torch.device("cpu"))) == 4.0
