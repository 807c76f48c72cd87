"""DSVE-loc: WELDON pooling against a sort-based loop, the reference's lr schedule, the training phases (the SRU
frozen at first), model state round trips, and the image/text embeddings the pointing game reads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.common.items import Items, TokensData
from models.dsve.nets import DSVEModel, WeldonPooling
from models.dsve.trainer import DSVEConfig, DSVETrainer


def _weldon_loop(x: np.ndarray, n_max: int, n_min: int) -> np.ndarray:
    b, c, h, w = x.shape
    out = np.zeros((b, c))
    for i in range(b):
        for j in range(c):
            v = sorted(x[i, j].ravel().tolist(), reverse=True)
            out[i, j] = sum(v[:n_max]) / n_max + (sum(v[len(v) - n_min:]) / n_min if n_min else 0.0)
    return out


@pytest.mark.parametrize("n_max,n_min", [(15, None), (3, 5), (1, 0), (0.25, None)])
def test_weldon_pooling_against_a_sort_loop(n_max, n_min):
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    got = WeldonPooling(n_max, n_min)(x).numpy()
    k_max = n_max if n_max >= 1 else int(np.floor(n_max * 42))
    k_min = k_max if n_min is None else n_min
    np.testing.assert_allclose(got, _weldon_loop(x.numpy(), int(k_max), int(k_min)), rtol=1e-12)


def test_weldon_pooling_refuses_a_map_smaller_than_its_regions():
    with pytest.raises(ValueError, match="n_max"):
        WeldonPooling(15)(torch.zeros(1, 2, 3, 3))


def test_weldon_gradient_reaches_only_the_kept_regions():
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    WeldonPooling(2, 1)(x).sum().backward()
    g = x.grad.view(-1)
    order = torch.argsort(x.detach().view(-1), descending=True)
    assert torch.allclose(g[order[:2]], torch.full((2,), 0.5)) and torch.allclose(g[order[-1:]], torch.ones(1))
    assert (g[order[2:-1]] == 0).all()


def test_lr_schedule_is_the_references_multisteplr():
    t = DSVETrainer(DSVEConfig(lr=1e-3))
    # MultiStepLR([2..6], 0.5) stepped with the finished epoch: epoch t trains at lr * 0.5^#{m <= t - 1}
    assert [t.lr_at(e) for e in range(9)] == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 2.5e-4, 1.25e-4, 6.25e-5,
                                                            3.125e-5, 3.125e-5])


SMALL = dict(map_channels=24, embed_size=16, word_dim=12, sru_layers=2, n_max=2, batch_size=8, epochs=3,
             lr=1e-2, text_epoch=2, lr_milestones=[], word_vectors="random:3")


def _items(n_images: int = 6, per: int = 2, seed: int = 0) -> Items:
    rng = np.random.default_rng(seed)
    words = ["red", "blue", "green", "circle", "square", "cross"]
    texts = [f"a {words[g % 3]} {words[3 + g % 3]} . Second sentence" for g in range(n_images) for _ in range(per)]
    maps = rng.normal(size=(n_images, 4, 4, 10)).astype(np.float32)
    groups = [str(g) for g in range(n_images)]
    return Items([f"{g}/{k}" for g in range(n_images) for k in range(per)], {"image": maps, "text": TokensData(texts)},
                 frozenset({"image"}), groups=groups, group_of=np.repeat(np.arange(n_images), per))


def test_the_sru_is_frozen_before_text_epoch_and_trains_after():
    items = _items()
    t = DSVETrainer(DSVEConfig(**{**SMALL, "epochs": 2, "text_epoch": 2}), device="cpu")
    t.fit(items)
    sru0 = {k: v.clone() for k, v in t.model.text.state_dict().items()}
    conv0 = t.model.conv.weight.detach().clone()
    # built again from the same seed: the SRU still holds its initial weights after two frozen epochs
    fresh = DSVETrainer(DSVEConfig(**{**SMALL, "epochs": 2}), device="cpu").build(10, t.vectors)
    assert all(torch.equal(v, fresh.model.text.state_dict()[k]) for k, v in sru0.items())
    assert not torch.equal(conv0, fresh.model.conv.weight)  # the image head trained
    t2 = DSVETrainer(DSVEConfig(**{**SMALL, "epochs": 3, "text_epoch": 2}), device="cpu").fit(items)
    assert any(not torch.equal(v, t2.model.text.state_dict()[k]) for k, v in sru0.items())


def test_state_round_trip_gives_the_same_embeddings(tmp_path):
    items = _items()
    t = DSVETrainer(DSVEConfig(**SMALL), device="cpu").fit(items, items)
    path = tmp_path / "model.pt"
    torch.save(t.state_dict(), path)
    back = DSVETrainer(DSVEConfig(**SMALL), device="cpu").load_state_dict(torch.load(path, weights_only=True))
    a, b = t.embed(items), back.embed(items)
    for k in ("image", "text"):
        np.testing.assert_array_equal(a[k], b[k])
        assert np.allclose(np.linalg.norm(a[k], axis=1), 1, atol=1e-5)
    assert a["image"].shape == (6, 16) and a["text"].shape == (12, 16)
    # other word vectors than the model was trained with are refused, not silently used
    other = DSVETrainer(DSVEConfig(**{**SMALL, "word_vectors": "random:4"}), device="cpu")
    with pytest.raises(ValueError, match="differ"):
        other.load_state_dict(torch.load(path, weights_only=True))


def test_act_maps_and_fc_weight_give_the_heatmap_of_the_image_branch():
    items = _items()
    t = DSVETrainer(DSVEConfig(**SMALL), device="cpu").fit(items)
    act = t.act_maps(items, np.array([0, 1]))
    assert act.shape == (2, 24, 4, 4)
    # the image embedding is fc(WELDON(act)): act maps and the fc weight are the ones the branch uses
    pooled = WeldonPooling(2)(torch.from_numpy(act)).numpy()
    emb = pooled @ t.fc_weight().T + t.model.fc.bias.detach().numpy()
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(emb, t.embed(items)["image"][:2], atol=1e-5)


def test_only_the_first_sentence_is_read():
    items = _items()
    t = DSVETrainer(DSVEConfig(**SMALL), device="cpu").fit(items)
    a = t.text_embeddings(["a red circle. Something else entirely", "a red circle.", "a red circle. Other"])
    np.testing.assert_allclose(a[0], a[1], atol=1e-6)
    np.testing.assert_allclose(a[2], a[1], atol=1e-6)
    assert not np.allclose(t.text_embeddings(["a blue circle."])[0], a[1], atol=1e-3)


def test_model_shapes():
    m = DSVEModel(10, 24, 16, 2, 0.5, 12, 2, 0.25).eval()
    assert m.image(torch.randn(3, 5, 5, 10)).shape == (3, 16)
    assert m.caption(torch.randn(3, 7, 12), torch.tensor([7, 3, 1])).shape == (3, 16)


def test_finetuning_trains_layer3_and_layer4_on_the_raw_pictures(tmp_path):
    from PIL import Image

    from pipeline.datasets import Clip

    rng = np.random.default_rng(0)
    clips, texts = [], []
    words = ["red", "blue", "green", "circle", "square", "cross"]
    for g in range(6):
        path = tmp_path / f"{g}.png"
        Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(path)
        clips += [Clip(f"{g}/{k}", {"image": path}, group=str(g)) for k in range(2)]
        texts += [f"a {words[g % 3]} {words[3 + g % 3]}"] * 2
    stage = {"stage": "r", "implementation": "resnet152", "params": {"weights": "random:0", "image_size": 64}}
    cfg = DSVEConfig(**{**SMALL, "n_max": 1, "epochs": 2, "finetune_epoch": 1, "batch_size": 12})

    def items_for(t: DSVETrainer) -> Items:
        ext = t.extractor
        maps = np.stack([ext.compute([ext.load(c)])[0][0] for c in clips[::2]]).astype(np.float32)  # the store's rows
        it = Items([c.clip_id for c in clips], {"image": maps, "text": TokensData(texts)}, frozenset({"image"}),
                   groups=[str(g) for g in range(6)], group_of=np.repeat(np.arange(6), 2), media=clips)
        it.data.update(t.media_data(it))
        it.per_group = it.per_group | {"pictures"}
        return it

    before = DSVETrainer.create(DSVEConfig(**{**SMALL, "n_max": 1, "epochs": 1, "finetune_epoch": 1}), "cpu",
                                {"image": stage})
    items = items_for(before)
    before.fit(items)
    assert not before.trunk_live
    # the trunk on the stored pictures gives the stored maps: the phases read the same features
    before.model.eval()
    with torch.inference_mode():
        x = before.model.trunk(before._normalise(items.data["pictures"].stored(np.arange(6)))).numpy()
    np.testing.assert_allclose(x, items.data["image"], rtol=1e-4, atol=1e-4)

    t = DSVETrainer.create(cfg, "cpu", {"image": stage})
    t.fit(items_for(t))
    fresh = DSVETrainer.create(cfg, "cpu", {"image": stage}).build(2048, t.vectors).model.trunk
    assert t.trunk_live
    assert all(torch.equal(a, b) for a, b in zip(t.model.trunk.stem.state_dict().values(), fresh.stem.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(t.model.trunk.top.parameters(), fresh.top.parameters()))
    emb = t.embed(items)["image"]
    np.testing.assert_allclose(emb, t.picture_embeddings(items.data["pictures"].stored(np.arange(6)).permute(0, 2, 3, 1).numpy()),
                               atol=1e-5)
    stored = t.model.image(torch.from_numpy(items.data["image"])).detach().numpy()
    assert not np.allclose(emb, stored, atol=1e-3)  # the embeddings read the trained trunk, not the stale store
    # a restored run rebuilds the trunk and takes its trained weights from the model, not the stage's
    path = tmp_path / "model.pt"
    torch.save(t.state_dict(), path)
    back = DSVETrainer.create(cfg, "cpu", {"image": stage}, restoring=True)
    back.load_state_dict(torch.load(path, weights_only=True))
    assert back.trunk_live
    np.testing.assert_allclose(back.embed(items_for(back))["image"], emb, atol=1e-5)
