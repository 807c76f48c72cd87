"""The VGS networks and loss: shapes, Keras 'same' pooling, the attention head against a hand computation,
the reference's triplet loss, left padding, impostors, the sampled Recall@10, state round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import models.vgs.nets as vgs_nets
from models.common.items import Items, SequenceData
from models.common.metrics import sampled_recall_at_10
from models.vgs.trainer import VGSConfig, VGSTrainer, score_triplet_loss


def test_branches_give_the_reference_shapes():
    speech = vgs_nets.SpeechBranch(40, width=0.25).eval()
    assert speech(torch.randn(2, 512, 40)).shape == (2, 64, 128)
    assert speech(torch.randn(2, 511, 40)).shape == (2, 64, 128)  # 'same' pooling: ceil(511/2)=256, 128, 64
    assert speech(torch.randn(2, 100, 40)).shape == (2, 13, 128)  # 100 -> 50 -> 25 -> 13
    image = vgs_nets.ImageBranch(512, 128).eval()
    assert image(torch.randn(2, 14, 14, 512)).shape == (2, 196, 128)


def test_keras_same_max_pool_pads_on_the_right():
    branch = vgs_nets.SpeechBranch(1, dropout=0.0, width=1 / 128)
    x = torch.arange(6, dtype=torch.float32).view(1, 1, 6)
    pad = max((-(-6 // 2) - 1) * 2 + 3 - 6, 0)
    assert pad == 1  # TF: windows [0..2], [2..4], [4..5]: the last one has one element of padding on the right
    pooled = torch.nn.functional.max_pool1d(torch.nn.functional.pad(x, (0, 1), value=float("-inf")), 3, 2)
    assert pooled.flatten().tolist() == [2.0, 4.0, 5.0]
    assert branch.pools == [False, True, True, True, False]


def test_attention_head_matches_a_hand_computation():
    torch.manual_seed(0)
    head = vgs_nets.AttentionHead(4, 6)
    a, i = torch.randn(1, 4, 3), torch.randn(1, 6, 3)
    s = a[0] @ i[0].T
    att_i = torch.softmax(s, 1) @ i[0]
    att_id = torch.sigmoid(s @ head.dense_i.weight.T + head.dense_i.bias) @ i[0]
    att_a = torch.softmax(s.T, 1) @ a[0]
    att_ad = torch.sigmoid(s.T @ head.dense_a.weight.T + head.dense_a.bias) @ a[0]
    va = torch.cat([att_i.mean(0), att_id.mean(0), a[0].mean(0)])
    vi = torch.cat([att_a.mean(0), att_ad.mean(0), i[0].mean(0)])
    want = torch.dot(va, vi) / va.norm() / vi.norm()
    assert head(a, i).item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.equal(head.av_tensor(a, i)[0], s)


def test_matchmap_head_scores_the_mean_cosine():
    torch.manual_seed(0)
    head = vgs_nets.MatchmapHead(3, 5, 4)
    a, i = torch.randn(2, 6, 3), torch.randn(2, 7, 5)
    pa = torch.nn.functional.normalize(head.dense_a(a), dim=-1)
    pi = torch.nn.functional.normalize(head.dense_i(i), dim=-1)
    cos = torch.einsum("btd,bpd->btp", pa, pi)
    assert torch.allclose(head(a, i), cos.mean(dim=(1, 2)))


def test_triplet_loss_is_the_reference_formula():
    sp = torch.tensor([0.5, 0.2, 0.9])
    si = torch.tensor([0.45, 0.5, 0.0])  # wrong image
    sc = torch.tensor([0.1, 0.25, 0.85])  # wrong caption
    want = sum(max(0, c - p + 0.1) + max(0, i - p + 0.1) for p, i, c in zip(sp.tolist(), si.tolist(), sc.tolist()))
    assert score_triplet_loss(sp, si, sc, 0.1).item() == pytest.approx(want)
    assert score_triplet_loss(sp, si, sc, 0.1).item() != pytest.approx(score_triplet_loss(sp, si, sc, -0.1).item())


def _items(n_items: int = 6, lengths=(3, 5, 8, 2, 8, 4), max_len: int = 8) -> Items:
    rows = {f"c{k}": np.full((lengths[k], 2), k + 1, np.float32) for k in range(n_items)}
    seq = SequenceData(lambda cid: rows[cid], list(rows), max_len, 2, np.minimum(np.array(lengths), max_len))
    maps = np.random.default_rng(0).normal(size=(3, 2, 2, 4)).astype(np.float32)
    return Items(list(rows), {"speech": seq, "image": maps}, frozenset({"image"}), groups=["g0", "g1", "g2"],
                 group_of=np.array([0, 0, 1, 1, 2, 2]))


def test_speech_is_zero_padded_on_the_left():
    tr = VGSTrainer(VGSConfig(max_frames=8), "cpu")
    x = tr._speech(_items(), np.array([0, 2, 3])).numpy()
    assert (x[0, :5] == 0).all() and (x[0, 5:] == 1).all()  # 3 frames at the end
    assert (x[1] == 3).all()  # 8 frames: no padding
    assert (x[2, :6] == 0).all() and (x[2, 6:] == 4).all()


def test_impostors_come_from_two_permutations_fixed_per_epoch():
    tr = VGSTrainer(VGSConfig(batch_size=4), "cpu")
    items = _items()
    first = list(tr.batches(items, 0))
    again = list(tr.batches(items, 0))
    other = list(tr.batches(items, 1))
    assert all(np.array_equal(a, b) for x, y in zip(first, again) for a, b in zip(x, y))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(first, other))
    anchors = np.concatenate([b[0] for b in first])
    assert sorted(anchors.tolist()) == list(range(6))  # every caption once per epoch, in batches of 4
    assert sorted(np.concatenate([b[1] for b in first]).tolist()) == list(range(6))  # a permutation


def test_a_short_fit_lowers_the_loss_and_state_round_trips():
    items = _items(lengths=(8,) * 6)
    tr = VGSTrainer(VGSConfig(max_frames=8, width=1 / 16, epochs=15, batch_size=6, lr=1e-2, dropout=0.0), "cpu")
    tr.fit(items)
    assert tr.history["loss"][-1] < tr.history["loss"][0]
    emb = tr.embed(items)
    assert emb["speech"].shape == (6, 32) and emb["image"].shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(emb["speech"], axis=1), 1, rtol=1e-5)
    again = VGSTrainer(tr.config, "cpu").load_state_dict(tr.state_dict())
    np.testing.assert_allclose(again.embed(items)["speech"], emb["speech"], rtol=1e-5, atol=1e-6)
    s = again.av_tensors(items)
    assert s.shape == (6, 1, 4)  # 8 frames / 8, 2 x 2 cells


def test_sampled_recall_at_10_is_a_stable_sort_of_each_row():
    rng = np.random.default_rng(9)
    x = np.round(rng.normal(size=(40, 3)), 1)  # few distinct values: many ties, and rows drawn twice
    y = np.round(x + rng.normal(scale=0.5, size=x.shape), 1)
    draws = np.random.default_rng(0)
    hits = []
    for _ in range(3):  # the reference's loop: the 10 first of a stable argsort of the cosine distances
        idx = draws.integers(0, 40, size=60)
        a, b = x[idx] / np.linalg.norm(x[idx], axis=1, keepdims=True), y[idx] / np.linalg.norm(y[idx], axis=1, keepdims=True)
        top = np.argsort(1.0 - a @ b.T, axis=1, kind="stable")[:, :10]
        hits.append((top == np.arange(60)[:, None]).any(axis=1).sum())
    assert sampled_recall_at_10(x, y, trials=3, pool=60, seed=0) == pytest.approx(np.mean(hits) / 60)


def test_sampled_recall_at_10():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 32))
    assert sampled_recall_at_10(x, x, trials=5) > 0.99
    assert sampled_recall_at_10(x, rng.normal(size=(5000, 32)), trials=5) < 0.03  # chance: 10 / 1000
    near = x + 1.5 * rng.normal(size=x.shape)
    mid = sampled_recall_at_10(x, near, trials=5)
    assert 0.05 < mid < 1.0


def test_maps_read_on_demand_train_the_same_model():
    from models.common.items import MapData

    items = _items(lengths=(8,) * 6)
    cfg = VGSConfig(max_frames=8, width=1 / 16, epochs=2, batch_size=6, lr=1e-2, dropout=0.0)
    eager = VGSTrainer(cfg, "cpu").fit(items)
    maps = items.data["image"]
    lazy_items = Items(items.ids, {**items.data, "image": MapData(lambda g: maps[int(g[1:])], ["g0", "g1", "g2"],
                                                                  maps.shape[1:])},
                       items.per_group, groups=items.groups, group_of=items.group_of)
    lazy = VGSTrainer(cfg, "cpu").fit(lazy_items)
    np.testing.assert_array_equal(lazy.embed(lazy_items)["image"], eager.embed(items)["image"])
    assert lazy_items.subset(np.array([4, 5])).data["image"].ids == ["g2"]


def test_training_resumes_bit_for_bit_from_an_epoch_checkpoint():
    items = _items(lengths=(8,) * 6)
    val = items.subset(np.array([0, 2, 4]))
    cfg = VGSConfig(max_frames=8, width=1 / 16, epochs=4, batch_size=3, lr=1e-2)  # dropout on: RNG state matters
    straight = VGSTrainer(cfg, "cpu").fit(items, val)
    saved = {}

    def stop_after_two(tr, improved):
        if tr.epoch == 1:
            saved.update(tr.checkpoint())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        VGSTrainer(cfg, "cpu").fit(items, val, on_epoch=stop_after_two)
    resumed = VGSTrainer(cfg, "cpu")
    resumed.resume(saved)
    resumed.fit(items, val)
    assert resumed.history["loss"] == straight.history["loss"]
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_bn_momentum_reaches_every_batch_norm_and_keeps_old_run_keys():
    from pipeline.config import key_params

    for mom in (0.01, 0.3):
        model = VGSTrainer(VGSConfig(width=1 / 32, bn_momentum=mom, dropout=0.0)).build((40, 2, 2, 8)).model
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert len(norms) == 7  # five in the speech branch, two in the image branch
        model.train()
        model.speech(torch.randn(3, 16, 40) + 2.0)
        maps = torch.randn(3, 2, 2, 8) + 2.0
        model.image(maps)
        for n in norms:  # one update from the initial zeros: running mean = momentum x the batch's mean
            assert n.momentum == mom and 0 < n.running_mean.abs().max() <= mom * 50, n
        torch.testing.assert_close(norms[-2].running_mean, mom * maps.mean((0, 1, 2)))  # bn0 saw the maps
    assert key_params(VGSConfig, {"lr": 1e-3, "bn_momentum": 0.01}) == {"lr": 1e-3}
    with pytest.raises(ValueError, match="bn_momentum"):
        VGSConfig(bn_momentum=0.0)
