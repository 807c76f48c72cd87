"""Wiring of DSVE-loc, See-Hear-Read and TNN-C-CCA: during a short real fit, spies on the losses each trainer calls
check that the options its config names reach them, that every student / branch gets its own term on its own
outputs for the batch's training items, and that model selection on a validation set never reads a training item.
(The loss formulas themselves are checked in test_losses.py, test_dsve.py, test_shr.py and test_tnn_ccca.py.)"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest
import torch

import models.dsve.trainer as dsve_mod
import models.shr.trainer as shr_mod
import models.tnn_ccca.trainer as tnn_mod
from models.common.items import Items, SequenceData, TokensData
from models.common.losses import ContrastiveLoss, distillation_kl
from models.dsve.trainer import DSVEConfig, DSVETrainer
from models.shr.nets import SHRModel
from models.shr.trainer import SeeHearRead, SHRConfig
from models.tnn_ccca.cluster_cca import ClusterCCA
from models.tnn_ccca.trainer import TNNCCCAConfig, TNNCCCATrainer
from pipeline.training.views import _distribution
from tests.models.test_dsve import SMALL as DSVE_SMALL
from tests.models.test_dsve import _items as dsve_items


def contrastive_spy(calls: list[dict[str, Any]]) -> type:
    """ContrastiveLoss that records the options it was built with and what it is fed, then computes as the real one."""

    class Spy(ContrastiveLoss):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            out = super().forward(a, b)
            calls.append({"margin": self.margin, "max_violation": self.max_violation, "direction": self.direction,
                          "a": a.detach().clone(), "b": b.detach().clone(), "out": out.detach().clone()})
            return out

    return Spy


# -- DSVE-loc ---------------------------------------------------------------------------------------------------

DSVE_TINY = {**DSVE_SMALL, "epochs": 2, "text_epoch": 1, "dropout": 0.0, "text_dropout": 0.0}  # no dropout: recomputable


@pytest.mark.parametrize("options", [{}, {"max_violation": False, "margin": 0.35}], ids=["default", "changed"])
def test_dsve_loss_gets_the_configs_options_and_the_batchs_embeddings(options, monkeypatch):
    """Catches DSVE dropping or hard-coding margin/max_violation (the default losing VSE++'s hardest negative) or
    feeding the loss embeddings of other images/captions than the batch's."""
    cfg = DSVEConfig(**{**DSVE_TINY, **options})
    if not options:  # the reference's loss (the module's docstring): VSE++ max violation, margin 0.2
        assert cfg.max_violation is True and cfg.margin == pytest.approx(0.2)
    items = dsve_items()
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(dsve_mod._losses, "ContrastiveLoss", contrastive_spy(calls))
    trainer = DSVETrainer(cfg, device="cpu")
    batches: list[tuple[int, np.ndarray, torch.Tensor, torch.Tensor]] = []
    original = DSVETrainer.batch_loss

    def batch_loss(self, train, idx, epoch):
        out = original(self, train, idx, epoch)
        with torch.no_grad():  # the same weights (the step comes after): the branches on this batch's items
            img = self.model.image(torch.from_numpy(np.asarray(train.data["image"])[train.group_of[idx]]))
            cap = self.model.caption(*self.words([train.data["text"].texts[int(i)] for i in idx]))
        batches.append((epoch, np.array(idx), img, cap))
        return out

    monkeypatch.setattr(DSVETrainer, "batch_loss", batch_loss)
    trainer.fit(items)
    assert len(calls) == len(batches) > 0  # one loss per batch
    for call in calls:
        assert call["margin"] == pytest.approx(cfg.margin)
        assert call["max_violation"] is cfg.max_violation
        assert call["direction"] == "both"  # image->text and text->image
    for epoch in range(cfg.epochs):  # every training caption is in some batch of every epoch
        assert set(np.concatenate([b[1] for b in batches if b[0] == epoch]).tolist()) == set(range(len(items)))
    for call, (_, idx, img, cap) in zip(calls, batches):
        assert call["a"].shape == call["b"].shape == (len(idx), cfg.embed_size)
        torch.testing.assert_close(call["a"], img, rtol=1e-5, atol=1e-6)  # images of the batch's captions, in order
        torch.testing.assert_close(call["b"], cap, rtol=1e-5, atol=1e-6)  # the batch's captions


def _record_reads(monkeypatch, cls: type, readers: dict[str, Any]) -> list[tuple[str, str]]:
    """Wrap `cls.validate`/`cls.batch_loss` to know the phase, and each reader(items, which) to log (phase, id)."""
    phase = ["fit"]
    reads: list[tuple[str, str]] = []
    for hook, name in (("validate", "validate"), ("batch_loss", "train")):
        original = getattr(cls, hook)

        def wrapped(self, *a, _original=original, _name=name, **k):
            phase[0] = _name
            try:
                return _original(self, *a, **k)
            finally:
                phase[0] = "fit"

        monkeypatch.setattr(cls, hook, wrapped)
    for reader, ids_of in readers.items():
        original = getattr(cls, reader)
        if isinstance(inspect.getattr_static(cls, reader), staticmethod):
            def read_static(items, *a, _original=original, _ids_of=ids_of, **k):
                reads.extend((phase[0], i) for i in _ids_of(items, *a))
                return _original(items, *a, **k)

            monkeypatch.setattr(cls, reader, staticmethod(read_static))
            continue

        def read(self, items, *a, _original=original, _ids_of=ids_of, **k):
            reads.extend((phase[0], i) for i in _ids_of(items, *a))
            return _original(self, items, *a, **k)

        monkeypatch.setattr(cls, reader, read)
    return reads


def _split(items: Items, n_train_groups: int) -> tuple[Items, Items]:
    assert items.group_of is not None
    train = np.flatnonzero(items.group_of < n_train_groups)
    return items.subset(train), items.subset(np.flatnonzero(items.group_of >= n_train_groups))


def test_dsve_validation_never_reads_a_training_item(monkeypatch):
    """Catches DSVE selecting its model on the training items (fit or the loop validating on `train`, or train and
    validation items mixed)."""
    train, val = _split(dsve_items(n_images=10), 6)
    reads = _record_reads(monkeypatch, DSVETrainer, {
        "_maps": lambda items, groups, *a: ["image:" + items.groups[int(g)] for g in groups],
        "_texts": lambda items, idx: ["text:" + items.ids[int(i)] for i in idx]})
    cfg = DSVEConfig(**{**DSVE_SMALL, "epochs": 2})
    trainer = DSVETrainer(cfg, device="cpu").fit(train, val)
    assert len(trainer.history["val_rsum"]) == cfg.epochs  # selected on validation after every epoch
    train_ids = {"image:" + g for g in train.groups} | {"text:" + i for i in train.ids}
    val_ids = {"image:" + g for g in val.groups} | {"text:" + i for i in val.ids}
    assert train_ids.isdisjoint(val_ids)
    scored = {i for p, i in reads if p == "validate"}
    assert scored == val_ids  # validation scores every validation image and caption, and nothing else
    assert {i for p, i in reads if p == "train"} == train_ids  # training reads only (and all) training items


# -- See, Hear, and Read ----------------------------------------------------------------------------------------

SHR_TINY = dict(width=0.03, epochs=2, batch_size=8, sound_frames=32, word_dim=12, max_words=6)


def shr_items(cfg: SHRConfig, n_images: int = 8, per: int = 2, seed: int = 0) -> tuple[Items, np.ndarray]:
    """Items with image vectors, sounds, texts and a teacher read as the pipeline reads it: softmax(logits / the
    temperature of the trainer's own `teacher` view); and the logits."""
    rng = np.random.default_rng(seed)
    n = n_images * per
    words = ["red", "blue", "circle", "square", "a", "on"]
    texts = [" ".join(rng.choice(words, 5)) for _ in range(n)]
    sound = rng.normal(size=(n, 40, 20)).astype(np.float32)
    logits = rng.normal(scale=2.0, size=(n_images, 50))
    view = next(v for v in SeeHearRead(cfg, "cpu").views() if v.name == "teacher")
    ids = [f"c{i}" for i in range(n)]
    items = Items(ids, {"image": rng.normal(size=(n_images, 24)).astype(np.float32),
                        "teacher": _distribution(logits, view.temperature).astype(np.float32),
                        "sound": SequenceData(lambda cid: sound[int(cid[1:])], ids, 32, 20, np.full(n, 32)),
                        "text": TokensData(texts)},
                  frozenset({"image", "teacher"}), groups=[f"g{g}" for g in range(n_images)],
                  group_of=np.repeat(np.arange(n_images), per))
    return items, logits


@pytest.mark.parametrize("options", [{}, {"margin": 0.5, "rank_direction": "both", "temperature": 2.5,
                                          "kl_weight": 0.3, "rank_weight": 2.0}], ids=["default", "changed"])
def test_shr_each_student_gets_its_own_terms_with_the_configs_options(options, monkeypatch):
    """Catches See-Hear-Read distilling the image student twice (or the other one twice), ranking the wrong pair or
    order, losing margin/rank_direction/temperature, or mixing up kl_weight and rank_weight."""
    cfg = SHRConfig(**{**SHR_TINY, **options})
    if not options:  # the paper's ranking formula: image rows are the queries
        assert cfg.rank_direction == "a2b"
    items, logits = shr_items(cfg)
    ranks: list[dict[str, Any]] = []
    monkeypatch.setattr(shr_mod._losses, "ContrastiveLoss", contrastive_spy(ranks))
    kls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def kl_spy(teacher, student):
        out = distillation_kl(teacher, student)
        kls.append((teacher.detach().clone(), student.detach().clone(), out.detach().clone()))
        return out

    monkeypatch.setattr(shr_mod._losses, "distillation_kl", kl_spy)
    forwards: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    forward = SHRModel.forward

    def forward_spy(self, modality, x):
        h, z = forward(self, modality, x)
        forwards.append((modality, x.detach().clone(), h.detach().clone(), z.detach().clone()))
        return h, z

    monkeypatch.setattr(SHRModel, "forward", forward_spy)
    batches: list[dict[str, Any]] = []
    original = SeeHearRead.batch_loss

    def batch_loss(self, train, batch, epoch):
        forwards.clear()
        n_kl, n_rank = len(kls), len(ranks)
        loss, parts = original(self, train, batch, epoch)
        batches.append({"kind": batch[0], "idx": np.array(batch[1]), "train": train, "loss": float(loss.detach()),
                        "forwards": list(forwards), "kl": kls[n_kl:], "rank": ranks[n_rank:]})
        return loss, parts

    monkeypatch.setattr(SeeHearRead, "batch_loss", batch_loss)
    trainer = SeeHearRead(cfg, "cpu").fit(items)
    assert {b["kind"] for b in batches} == {"text", "sound"}
    for b in batches:
        kind, idx, train = b["kind"], b["idx"], b["train"]
        groups = train.group_of[idx]
        assert [f[0] for f in b["forwards"]] == ["image", kind]  # one image student and the pair's other student
        (_, x_img, h_img, z_img), (_, x_other, h_other, z_other) = b["forwards"]
        # the students read the batch's own items: its captions' images, their sounds / words
        np.testing.assert_array_equal(x_img.numpy(), np.asarray(train.data["image"])[groups])
        if kind == "sound":
            np.testing.assert_array_equal(x_other.numpy(), train.data["sound"](idx)[:, :cfg.sound_frames])
        else:
            for row, i in zip(x_other.numpy(), idx):
                want = trainer.vectors.encode(train.data["text"].texts[int(i)])[:cfg.max_words]
                np.testing.assert_array_equal(row[:len(want)], want)
                assert not row[len(want):].any()
        # two KL terms: the teacher of the batch's images against each student, neither student twice
        teacher = torch.softmax(torch.from_numpy(logits[groups]) / cfg.temperature, dim=1).float()
        assert len(b["kl"]) == 2
        for t, _, _ in b["kl"]:
            torch.testing.assert_close(t, teacher, rtol=1e-5, atol=1e-6)
        students = [s for _, s, _ in b["kl"]]
        assert sum(torch.equal(s, z_img) for s in students) == 1, "the image student must be distilled exactly once"
        assert sum(torch.equal(s, z_other) for s in students) == 1, f"the {kind} student must be distilled exactly once"
        # one ranking term: image rows (the queries) against the other student's, with the config's options
        assert len(b["rank"]) == 1
        r = b["rank"][0]
        assert torch.equal(r["a"], h_img) and torch.equal(r["b"], h_other)
        assert r["margin"] == pytest.approx(cfg.margin) and r["direction"] == cfg.rank_direction
        assert r["max_violation"] is False  # the paper sums over every in-batch negative
        kl = 0.5 * sum(float(v) for _, _, v in b["kl"])
        assert b["loss"] == pytest.approx(cfg.kl_weight * kl + cfg.rank_weight * float(r["out"]), rel=1e-5)


def test_shr_validation_never_reads_a_training_item(monkeypatch):
    """Catches See-Hear-Read selecting its model on the training items (fit or the loop validating on `train`)."""
    cfg = SHRConfig(**{**SHR_TINY, "batch_size": 6})
    train, val = _split(shr_items(cfg, n_images=10)[0], 6)
    reads = _record_reads(monkeypatch, SeeHearRead, {
        "_image": lambda items, groups, *a, **k: ["image:" + items.groups[int(g)] for g in groups],
        "_input": lambda items, modality, idx: [f"{modality}:{items.ids[int(i)]}" for i in idx]})
    trainer = SeeHearRead(cfg, "cpu").fit(train, val)
    assert len(trainer.history["val_rsum"]) == cfg.epochs
    ids = {name: {"image:" + g for g in part.groups} | {f"{m}:{i}" for m in ("sound", "text") for i in part.ids}
           for name, part in (("train", train), ("val", val))}
    assert ids["train"].isdisjoint(ids["val"])
    assert {i for p, i in reads if p == "validate"} == ids["val"]  # every validation item, no training item
    assert {i for p, i in reads if p == "train"} == ids["train"]


# -- TNN-C-CCA --------------------------------------------------------------------------------------------------

TNN_TINY = dict(hidden=8, out_dim=4, n_components=2, epochs=2, triplet_batch=12)


@pytest.mark.parametrize("options", [{}, {"margin": 0.7, "mining": "hard", "warmup_epochs": 1}], ids=["default", "hard"])
def test_tnn_ccca_each_view_network_trains_on_its_own_view(options, monkeypatch):
    """Catches TNN-C-CCA feeding a branch the other view's data (or one branch both roles), losing margin/mining or
    the warm-up, leaving a branch untrained, or fitting Cluster-CCA on anything but the trained branches' outputs."""
    cfg = TNNCCCAConfig(**{**TNN_TINY, **options})
    if not options:  # the reference's generator: every valid triplet of a batch
        assert cfg.mining == "all"
    rng = np.random.default_rng(0)
    n, d = 30, 7  # both views the same width: a swapped view would run silently
    labels = np.array(["dog", "car", "rain"])[rng.integers(0, 3, n)]
    audio, visual = rng.normal(size=(n, d)) * 3 + 1, rng.normal(size=(n, d))
    losses: list[dict[str, Any]] = []
    triplet = tnn_mod.triplet_loss

    def triplet_spy(a, v, lab, margin, mining="all"):
        losses.append({"a": a.detach().clone(), "v": v.detach().clone(), "labels": lab.clone(), "margin": margin,
                       "mining": mining})
        return triplet(a, v, lab, margin, mining)

    monkeypatch.setattr(tnn_mod, "triplet_loss", triplet_spy)
    in_batch = [False]
    runs: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    initial: dict[str, dict[str, torch.Tensor]] = {}
    build = TNNCCCATrainer._build

    def build_spy(self, da, dv):
        build(self, da, dv)
        for view in ("audio", "visual"):
            initial[view] = {k: v.clone() for k, v in self.model[view].state_dict().items()}
            self.model[view].register_forward_hook(
                lambda m, inp, out, view=view: runs.append((view, inp[0].detach().clone(), out.detach().clone()))
                if in_batch[0] else None)

    monkeypatch.setattr(TNNCCCATrainer, "_build", build_spy)
    batches: list[tuple[int, np.ndarray, list]] = []
    original = TNNCCCATrainer.batch_loss

    def batch_loss(self, train, batch, epoch):
        runs.clear()
        in_batch[0] = True
        try:
            return original(self, train, batch, epoch)
        finally:
            in_batch[0] = False
            batches.append((epoch, batch.cpu().numpy().copy(), list(runs)))

    monkeypatch.setattr(TNNCCCATrainer, "batch_loss", batch_loss)
    fits: list[dict[str, Any]] = []

    class CCCASpy(ClusterCCA):
        def fit(self, x, y, labels):
            fits.append({"x": np.array(x), "y": np.array(y), "labels": np.array(labels), "k": self.n_components,
                         "beta": self.beta, "reg": self.reg})
            return super().fit(x, y, labels)

    monkeypatch.setattr(tnn_mod, "ClusterCCA", CCCASpy)
    trainer = TNNCCCATrainer(cfg, device="cpu").fit_arrays(audio, visual, labels)

    a_in, v_in = trainer.scale(audio, "audio"), trainer.scale(visual, "visual")
    assert len(losses) == len(batches) > 0
    for loss, (epoch, idx, branch_runs) in zip(losses, batches):
        # each branch ran once, on its own view's rows of this batch
        assert [r[0] for r in branch_runs] == ["audio", "visual"]
        (_, xa, ya), (_, xv, yv) = branch_runs
        np.testing.assert_allclose(xa.numpy(), a_in[idx], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(xv.numpy(), v_in[idx], rtol=1e-6, atol=1e-6)
        # the audio branch's outputs are the anchors, the visual branch's the positives / negatives
        assert torch.equal(loss["a"], ya) and torch.equal(loss["v"], yv)
        same = loss["labels"][:, None] == loss["labels"][None, :]
        np.testing.assert_array_equal(same.numpy(), labels[idx][:, None] == labels[idx][None, :])
        assert loss["margin"] == pytest.approx(cfg.margin)
        assert loss["mining"] == ("all" if epoch < cfg.warmup_epochs else cfg.mining)
    for view in ("audio", "visual"):  # both networks were trained
        now = trainer.model[view].state_dict()
        assert any(not torch.equal(now[k], v) for k, v in initial[view].items()), f"the {view} branch did not train"
    # Cluster-CCA: once, with the config's k / beta / reg, on the trained branches' outputs of the training clips
    assert len(fits) == 1
    f = fits[0]
    assert (f["k"], f["beta"], f["reg"]) == (cfg.n_components, cfg.beta, cfg.reg)
    out_a, out_v = trainer._nets(a_in, v_in)
    np.testing.assert_allclose(f["x"], out_a, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(f["y"], out_v, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(f["labels"][:, None] == f["labels"][None, :], labels[:, None] == labels[None, :])
