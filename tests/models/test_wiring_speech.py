"""Wiring of the speech trainers (VASE, VGS): during a short real fit, spies on the losses and hooks on the
branches check that each loss gets the batch's own training items, through the right branches, paired the
right way, with the options the config names; and that validation reads only validation items.

Every item's log-mel and every image's features are distinct random arrays, so each row a branch reads
is traced back to the item (or image) it came from by exact equality."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import models.common.losses as losses_mod
import models.vgs.trainer as vgs_mod
from models.common.items import Items, SequenceData, TokensData, build_vocab, encode_texts
from models.vase.trainer import VASEConfig, VASETrainer
from models.vgs.trainer import VGSConfig, VGSTrainer

VASE_TINY = {"width": 0.0625, "embed_size": 8, "max_frames": 32, "word_dim": 8, "min_word_count": 1,
             "batch_size": 4, "epochs": 1, "lr": 1e-3}
VGS_TINY = {"max_frames": 8, "width": 1 / 16, "batch_size": 4, "epochs": 2, "lr": 1e-3, "dropout": 0.0}


# -- data: every row traceable to its item -----------------------------------------------------------------



def _spy_validate(tap: dict, validate: Any, ids_of: Any) -> Any:
    """`validate` recording the ids it reads in `tap["validated"]`, with `tap["val"]` set while it runs."""
    def spied(data: Any) -> Any:
        tap["validated"].append(list(ids_of(data)))
        tap["val"] = True
        try:
            return validate(data)
        finally:
            tap["val"] = None
    return spied

def _items(prefix: str, n_img: int, per: int, seed: int, frames: int, n_mels: int, image_shape: tuple[int, ...],
           audio: str, image: str) -> Items:
    """`n_img` images x `per` captions; unique random log-mel per caption and features per image; unique texts."""
    rng = np.random.default_rng(seed)
    n = n_img * per
    ids = [f"{prefix}{k}" for k in range(n)]
    rows = {cid: rng.normal(size=(frames, n_mels)).astype(np.float32) for cid in ids}
    texts = [f"{prefix}w{k} {prefix}img{k // per} a" for k in range(n)]
    return Items(ids, {audio: SequenceData(rows.__getitem__, ids, frames, n_mels, np.full(n, frames)),
                       image: rng.normal(size=(n_img, *image_shape)).astype(np.float32),
                       "text": TokensData(texts)},
                 frozenset({image}), groups=[f"{prefix}img{g}" for g in range(n_img)],
                 group_of=np.repeat(np.arange(n_img), per))


class Tracer:
    """Maps a branch's input rows back to item ids / image names, over the train and validation splits."""

    def __init__(self, splits: list[Items], audio: str, image: str, vocab: list[str] | None = None) -> None:
        self.audio, self.images, self.texts = [], [], []
        for items in splits:
            seq = items.data[audio]
            self.audio += [(cid, torch.from_numpy(seq(np.array([k]))[0])) for k, cid in enumerate(items.ids)]
            self.images += [(g, torch.from_numpy(items.data[image][k])) for k, g in enumerate(items.groups)]
            if vocab is not None:
                ids, lengths = encode_texts(items.data["text"].texts, vocab)
                self.texts += [(cid, torch.from_numpy(ids[k, :lengths[k]])) for k, cid in enumerate(items.ids)]

    @staticmethod
    def _one(table: list[tuple[str, torch.Tensor]], row: torch.Tensor) -> str | None:
        hits = [name for name, x in table if x.shape == row.shape and torch.equal(x, row)]
        return hits[0] if len(hits) == 1 else None

    def speech(self, x: torch.Tensor) -> list[str | None]:
        return [self._one(self.audio, r) for r in x.float()]

    def image(self, x: torch.Tensor) -> list[str | None]:
        return [self._one(self.images, r) for r in x.float()]

    def text(self, ids: torch.Tensor, lengths: torch.Tensor) -> list[str | None]:
        return [self._one(self.texts, r[:int(n)]) for r, n in zip(ids, lengths)]


def _item_groups(items: Items, ids: list[str]) -> list[str]:
    assert items.group_of is not None
    pos = {cid: k for k, cid in enumerate(items.ids)}
    return [items.groups[int(items.group_of[pos[c]])] for c in ids]


# -- VASE ---------------------------------------------------------------------------------------------------


def _vase_splits(streams: int) -> tuple[Items, Items, list[str]]:
    train = _items("t", 4, 2, 0, 32, 40, (16,), "audio", "visual")
    val = _items("v", 3, 2, 1, 32, 40, (16,), "audio", "visual")
    vocab = build_vocab(train.data["text"].texts, 1)
    for items in (train, val):
        items.data["text"].vocab = vocab
        if streams == 2:
            del items.data["text"]
    return train, val, vocab


def _fit_vase(monkeypatch: pytest.MonkeyPatch, params: dict[str, Any]) -> dict[str, Any]:
    """Fit a tiny VASE with spies in place; returns the training steps and what validation read."""
    streams = params.get("streams", 2)
    train, val, vocab = _vase_splits(streams)
    tr = VASETrainer({**VASE_TINY, **params}, "cpu")
    tap: dict[str, Any] = {"steps": [], "step": None, "val": None, "val_reads": {"speech": [], "image": []},
                           "validated": []}

    def hook(name: str) -> Any:
        def record(module: Any, inputs: tuple, output: torch.Tensor) -> None:
            args = [x.detach().clone() for x in inputs]
            if tap["step"] is not None:
                tap["step"]["branch"][name] = (args, output.detach().clone())
            elif tap["val"] is not None and name in tap["val_reads"]:
                tap["val_reads"][name].append(args[0])
        return record

    build = tr.build

    def spied_build(*a: Any, **k: Any) -> Any:
        out = build(*a, **k)
        for name in ("image", "speech", "text"):
            branch = getattr(tr.model, name)
            if branch is not None:
                branch.register_forward_hook(hook(name))
        return out

    batch_loss = tr.batch_loss

    def spied_batch_loss(data: Any, idx: np.ndarray, epoch: int) -> Any:
        tap["step"] = {"ids": [data.clip_ids[int(i)] for i in idx], "branch": {}, "contrastive": [], "rec": []}
        total, parts = batch_loss(data, idx, epoch)
        tap["step"].update(total=float(total.detach()), parts=parts)
        tap["steps"].append(tap["step"])
        tap["step"] = None
        return total, parts

    spied_validate = _spy_validate(tap, tr.validate, lambda data: data.clip_ids)

    original = losses_mod.ContrastiveLoss

    class SpyContrastive(original):  # type: ignore[misc, valid-type]
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            out = super().forward(a, b)
            tap["step"]["contrastive"].append({"margin": self.margin, "max_violation": self.max_violation,
                                               "direction": self.direction, "a": a.detach().clone(),
                                               "b": b.detach().clone(), "out": float(out.detach())})
            return out

    rec_loss = losses_mod.reconstruction_loss

    def spy_rec(views: list[torch.Tensor], smooth: float, rounds: int = 2) -> torch.Tensor:
        out = rec_loss(views, smooth, rounds)
        tap["step"]["rec"].append({"views": [v.detach().clone() for v in views], "smooth": smooth, "rounds": rounds,
                                   "out": float(out.detach())})
        return out

    monkeypatch.setattr(tr, "build", spied_build)
    monkeypatch.setattr(tr, "batch_loss", spied_batch_loss)
    monkeypatch.setattr(tr, "validate", spied_validate)
    monkeypatch.setattr(losses_mod, "ContrastiveLoss", SpyContrastive)
    monkeypatch.setattr(losses_mod, "reconstruction_loss", spy_rec)
    tr.fit(train, val)
    tracer = Tracer([train, val], "audio", "visual", vocab if streams == 3 else None)
    return {**tap, "trainer": tr, "train": train, "val": val, "tracer": tracer}


def _branch_of(step: dict[str, Any], x: torch.Tensor) -> str | None:
    hits = [name for name, (_, out) in step["branch"].items() if out.shape == x.shape and torch.equal(out.float(), x)]
    return hits[0] if len(hits) == 1 else None


DEFAULT = VASEConfig()


@pytest.mark.parametrize("params, want", [
    ({}, {"margin": DEFAULT.margin, "max_violation": DEFAULT.max_violation, "smooth": 6.0,
          "rounds": DEFAULT.rec_rounds, "weight": DEFAULT.rec_weight}),
    ({"margin": 0.45, "max_violation": True, "smooth": 1.5, "rec_rounds": 3, "rec_weight": 0.7},
     {"margin": 0.45, "max_violation": True, "smooth": 1.5, "rounds": 3, "weight": 0.7}),
    ({"streams": 3}, {"margin": DEFAULT.margin, "max_violation": DEFAULT.max_violation, "smooth": 4.0,
                      "rounds": DEFAULT.rec_rounds, "weight": DEFAULT.rec_weight}),
    ({"streams": 3, "margin": 0.05, "max_violation": True, "smooth": 9.0, "rec_rounds": 1, "rec_weight": 2.0},
     {"margin": 0.05, "max_violation": True, "smooth": 9.0, "rounds": 1, "weight": 2.0}),
], ids=["two-default", "two-changed", "three-default", "three-changed"])
def test_vase_losses_get_the_configs_options_and_the_total_weighs_reconstruction(monkeypatch, params, want):
    """Catches an option dropped or swapped on its way to a loss (margin, max_violation, smooth, rounds, rec_weight)."""
    tap = _fit_vase(monkeypatch, params)
    assert len(tap["steps"]) == 2  # 8 training captions, batches of 4
    for step in tap["steps"]:
        assert step["contrastive"] and all(
            (c["margin"], c["max_violation"], c["direction"]) == (pytest.approx(want["margin"]), want["max_violation"],
                                                                  "both") for c in step["contrastive"])
        assert len(step["rec"]) == 1
        rec = step["rec"][0]
        assert rec["smooth"] == pytest.approx(want["smooth"]) and rec["rounds"] == want["rounds"]
        vse = sum(c["out"] for c in step["contrastive"])
        assert step["total"] == pytest.approx(vse + want["weight"] * rec["out"], rel=1e-5, abs=1e-6)
        assert step["parts"]["vse_loss"] == pytest.approx(vse, rel=1e-5)
        assert step["parts"]["rec_loss"] == pytest.approx(rec["out"], rel=1e-5)
        assert rec["out"] > 0  # the weight is tested on a term that is there


def test_vase_without_reconstruction_rounds_trains_on_the_vse_loss_alone(monkeypatch):
    """Catches rec_rounds: 0 still adding a reconstruction term (or dropping the VSE term)."""
    tap = _fit_vase(monkeypatch, {"rec_rounds": 0, "rec_weight": 1.0})
    for step in tap["steps"]:
        assert all(r["rounds"] == 0 for r in step["rec"])
        vse = sum(c["out"] for c in step["contrastive"])
        assert vse > 0 and step["total"] == pytest.approx(vse, rel=1e-5) and step["parts"]["rec_loss"] == 0


@pytest.mark.parametrize("streams, pairs", [
    (2, [{"image", "speech"}]),
    (3, [{"image", "speech"}, {"image", "text"}, {"speech", "text"}]),
])
def test_vase_each_stream_pair_gets_its_own_term_on_the_batchs_training_items(monkeypatch, streams, pairs):
    """Catches a term fed the wrong branch (e.g. image-text twice, no speech-text), an image not the caption's own,
    or a batch drawn from anything but the training items."""
    tap = _fit_vase(monkeypatch, {"streams": streams})
    tracer, train = tap["tracer"], tap["train"]
    seen: list[str] = []
    for step in tap["steps"]:
        ids = step["ids"]
        assert set(ids) <= set(train.ids)
        seen += ids
        # each branch read exactly the batch's items, row for row: speech i, its own image, its own transcript
        (speech_in,), _ = step["branch"]["speech"]
        assert tracer.speech(speech_in) == ids
        (image_in,), _ = step["branch"]["image"]
        assert tracer.image(image_in) == _item_groups(train, ids)
        if streams == 3:
            text_ids, lengths = step["branch"]["text"][0]
            assert tracer.text(text_ids, lengths) == ids
        else:
            assert "text" not in step["branch"]
        # one VSE term per pair of streams, on those branches' outputs for this batch
        got = [{_branch_of(step, c["a"]), _branch_of(step, c["b"])} for c in step["contrastive"]]
        assert sorted(map(sorted, got)) == sorted(map(sorted, pairs))
        # reconstruction rebuilds every branch's output, each once
        names = [_branch_of(step, v) for v in step["rec"][0]["views"]]
        assert sorted(names) == sorted(["image", "speech", "text"][:streams])
    assert sorted(seen) == sorted(train.ids)  # one epoch: every training caption once


def test_vase_validation_never_sees_a_training_item(monkeypatch):
    """Catches validation (model selection) ranking the training split, or mixing training items into it."""
    tap = _fit_vase(monkeypatch, {"streams": 3, "epochs": 2})
    train, val, tracer = tap["train"], tap["val"], tap["tracer"]
    assert tap["validated"] == [val.ids, val.ids]  # once per epoch, on the validation split
    speech = [cid for x in tap["val_reads"]["speech"] for cid in tracer.speech(x)]
    images = [g for x in tap["val_reads"]["image"] for g in tracer.image(x)]
    assert set(speech) == set(val.ids) and set(images) == set(val.groups)  # all of it, and nothing else
    assert not set(speech) & set(train.ids) and not set(images) & set(train.groups)
    assert all(set(s["ids"]) <= set(train.ids) for s in tap["steps"])


# -- VGS ----------------------------------------------------------------------------------------------------


def _vgs_splits() -> tuple[Items, Items]:
    train = _items("t", 4, 2, 2, 8, 4, (2, 2, 4), "speech", "image")
    val = _items("v", 3, 2, 3, 8, 4, (2, 2, 4), "speech", "image")
    return train, val


def _fit_vgs(monkeypatch: pytest.MonkeyPatch, params: dict[str, Any], validate: bool = False) -> dict[str, Any]:
    """Fit a tiny VGS with spies in place. At each triplet-loss call the spy also scores, with the model's own
    head, the triplets the batch names (anchor speech g, its image; wrong image of wi; wrong caption wc),
    taking each branch output from the row whose input was that item / image."""
    train, val = _vgs_splits()
    tracer = Tracer([train, val], "speech", "image")
    tr = VGSTrainer(VGSConfig(**{**VGS_TINY, **params}), "cpu")
    tap: dict[str, Any] = {"steps": [], "step": None, "val": None, "val_reads": {"speech": [], "image": []},
                           "validated": [], "embedded": []}

    def hook(name: str) -> Any:
        def record(module: Any, inputs: tuple, output: torch.Tensor) -> None:
            if tap["step"] is not None:
                tap["step"]["branch"][name] = (inputs[0].detach().clone(), output.detach().clone())
            if tap["val"] is not None:
                tap["val_reads"][name].append(inputs[0].detach().clone())
        return record

    build = tr.build

    def spied_build(*a: Any, **k: Any) -> Any:
        out = build(*a, **k)
        tr.model.speech.register_forward_hook(hook("speech"))
        tr.model.image.register_forward_hook(hook("image"))
        return out

    batch_loss = tr.batch_loss

    def spied_batch_loss(items: Items, batch: Any, epoch: int) -> Any:
        tap["step"] = {"items": items, "batch": tuple(np.array(b) for b in batch), "epoch": epoch,
                       "training": bool(tr.model.training), "branch": {}, "triplet": []}
        loss, parts = batch_loss(items, batch, epoch)
        tap["step"]["loss"] = float(loss.detach())
        tap["steps"].append(tap["step"])
        tap["step"] = None
        return loss, parts

    def expected_scores(step: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        items, (g, wi, wc) = step["items"], step["batch"]
        s_in, s_out = step["branch"]["speech"]
        i_in, i_out = step["branch"]["image"]
        speech_row = {cid: k for k, cid in reversed(list(enumerate(tracer.speech(s_in))))}
        image_row = {name: k for k, name in reversed(list(enumerate(tracer.image(i_in))))}
        ids = [items.ids[int(k)] for k in g]
        wrong_ids = [items.ids[int(k)] for k in wc]
        pos, neg = _item_groups(items, ids), _item_groups(items, [items.ids[int(k)] for k in wi])
        if not all(c in speech_row for c in ids + wrong_ids) or not all(x in image_row for x in pos + neg):
            return None  # the branches never read an item the batch names
        a = s_out[[speech_row[c] for c in ids]]
        a_wrong = s_out[[speech_row[c] for c in wrong_ids]]
        i, i_wrong = i_out[[image_row[x] for x in pos]], i_out[[image_row[x] for x in neg]]
        with torch.no_grad():
            head = tr.model.head
            return {"sp": head(a, i), "si": head(a, i_wrong), "sc": head(a_wrong, i)}

    triplet = vgs_mod.score_triplet_loss

    def spy_triplet(sp: torch.Tensor, si: torch.Tensor, sc: torch.Tensor, margin: float) -> torch.Tensor:
        out = triplet(sp, si, sc, margin)
        step = tap["step"]
        step["triplet"].append({"sp": sp.detach().clone(), "si": si.detach().clone(), "sc": sc.detach().clone(),
                                "margin": margin, "out": float(out.detach()), "want": expected_scores(step)})
        return out

    spied_validate = _spy_validate(tap, tr.validate, lambda items: items.ids)

    embed = tr.embed

    def spied_embed(items: Items, *a: Any, **k: Any) -> Any:
        tap["embedded"].append(list(items.ids))
        return embed(items, *a, **k)

    monkeypatch.setattr(tr, "build", spied_build)
    monkeypatch.setattr(tr, "batch_loss", spied_batch_loss)
    monkeypatch.setattr(tr, "validate", spied_validate)
    monkeypatch.setattr(tr, "embed", spied_embed)
    monkeypatch.setattr(vgs_mod, "score_triplet_loss", spy_triplet)
    tr.fit(train, val if validate else None)
    return {**tap, "trainer": tr, "train": train, "val": val, "tracer": tracer}


@pytest.mark.parametrize("model", ["cnnatt", "cnn0"])
def test_vgs_scores_each_caption_against_its_image_and_the_permuted_impostors(monkeypatch, model):
    """Catches a negative scored against the wrong image (e.g. the positive's, or wc's instead of wi's), a wrong
    caption not the permuted one, or the two impostor permutations being one and the same."""
    tap = _fit_vgs(monkeypatch, {"model": model})
    tr, train = tap["trainer"], tap["train"]
    steps = [s for s in tap["steps"] if s["training"]]
    assert {s["epoch"] for s in steps} == {0, 1}
    for epoch in (0, 1):
        batches = [s["batch"] for s in steps if s["epoch"] == epoch]
        # the batches the loss saw are the epoch's fixed draw (drawing again gives the same impostors)
        again = list(tr.batches(train, epoch))
        assert len(batches) == len(again) and all(
            np.array_equal(x, y) for b, c in zip(batches, again) for x, y in zip(b, c))
        g, wi, wc = (np.concatenate([b[k] for b in batches]) for k in range(3))
        n = len(train)
        for perm in (g, wi, wc):  # every caption once as anchor, once as wrong image's owner, once as wrong caption
            assert sorted(perm.tolist()) == list(range(n))
        assert not np.array_equal(wi, wc) and not np.array_equal(wi, g) and not np.array_equal(wc, g)
    for step in steps:
        assert step["items"] is train and len(step["triplet"]) == 1
        t = step["triplet"][0]
        assert t["want"] is not None, "a branch never read an item its batch names"
        n = len(step["batch"][0])
        for k in ("sp", "si", "sc"):
            assert t[k].shape == (n,)
            torch.testing.assert_close(t[k], t["want"][k], rtol=1e-5, atol=1e-6, msg=f"{k} scores other pairs")
        assert step["loss"] == pytest.approx(t["out"])  # the triplet loss is what is minimised


@pytest.mark.parametrize("model", ["cnnatt", "cnn0"])
@pytest.mark.parametrize("margin", [VGSConfig().margin, 0.35])
def test_vgs_triplet_loss_gets_the_configs_margin(monkeypatch, model, margin):
    """Catches a hard-coded or dropped margin: the configured one must reach the triplet loss."""
    tap = _fit_vgs(monkeypatch, {"model": model, "margin": margin, "epochs": 1})
    margins = [t["margin"] for s in tap["steps"] for t in s["triplet"]]
    assert len(margins) == 2 and all(m == pytest.approx(margin) for m in margins)


def test_vgs_training_rows_are_training_items_and_validation_never_sees_one(monkeypatch):
    """Catches validation (its loss, impostors or ranking) reading training items, or training on validation ones."""
    tap = _fit_vgs(monkeypatch, {"epochs": 2}, validate=True)
    train, val, tracer = tap["train"], tap["val"], tap["tracer"]
    training = [s for s in tap["steps"] if s["training"]]
    assert training and all(s["items"] is train for s in training)
    for s in training:
        s_in, _ = s["branch"]["speech"]
        i_in, _ = s["branch"]["image"]
        assert set(tracer.speech(s_in)) <= set(train.ids) and set(tracer.image(i_in)) <= set(train.groups)
    assert tap["validated"] == [val.ids, val.ids] and tap["embedded"] == [val.ids, val.ids]
    assert all(s["items"] is val for s in tap["steps"] if not s["training"])
    speech = [cid for x in tap["val_reads"]["speech"] for cid in tracer.speech(x)]
    images = [g for x in tap["val_reads"]["image"] for g in tracer.image(x)]
    assert set(speech) == set(val.ids) and set(images) == set(val.groups)
    assert not set(speech) & set(train.ids) and not set(images) & set(train.groups)
