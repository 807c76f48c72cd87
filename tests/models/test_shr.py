"""See, Hear, and Read pieces without media: the teacher's logits, the spectrogram, the students' shapes, the batches
(never a text-sound pair), the retrieval matrix against a loop."""
import numpy as np
import pytest
import torch

from extractors.logmel import log_spectrogram
from extractors.vgg16 import VGG16, VGG16Config
from models.common.items import Items, SequenceData, TokensData
from models.common.metrics import chance_medr, modality_matrix
from models.shr.nets import SHRModel
from models.shr.trainer import SeeHearRead, SHRConfig


def test_vgg16_logits_are_the_whole_classifier():
    from torchvision.models import VGG

    ex = VGG16(VGG16Config(weights="random:0", layer="logits", crop_size=64))
    assert ex.frame_dims() == (1000,) and ex.output_spec().extra["layer"] == "logits"
    net = ex.network()
    assert isinstance(net, VGG) and not net.training  # the whole network, fc8 included, dropouts off
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert net(x).shape == (2, 1000) and torch.equal(net(x), net(x))  # deterministic: no dropout


def test_spectrogram_preset_is_257_linear_bins_at_10_ms_with_the_mean_removed():
    sr = 16000
    tone = np.sin(2 * np.pi * 1000 * np.arange(5 * sr) / sr)
    s = log_spectrogram(tone)
    assert s.shape == (501, 257)  # 5 s at a 10 ms hop, centred frames
    assert abs(float(s.mean())) < 1e-4
    assert np.bincount(s.argmax(axis=1)).argmax() == 32  # 1 kHz / (16 kHz / 512)


def test_students_end_in_the_shared_layers_and_text_convolves_over_words():
    cfg = SHRConfig(width=0.0625, max_words=16)
    m = SHRModel(cfg, image_dim=40, sound_dim=257, word_dim=30, classes=1000).eval()
    hidden = cfg.size(cfg.hidden)
    for modality, x in (("image", torch.randn(3, 40)), ("sound", torch.randn(3, 500, 257)), ("text", torch.randn(3, 16, 30))):
        h, z = m(modality, x)
        assert h.shape == (3, hidden) and z.shape == (3, 1000)
    assert m.text[0].in_channels == 30  # word-vector channels, convolved along the 16 words (not over the embedding axis)
    words = torch.randn(1, 16, 30)
    with torch.no_grad():  # a sentence is more than a bag of words: the order of its words matters
        assert not torch.allclose(m("text", words)[0], m("text", words.flip(1))[0])


def _items(n_images: int = 12, per: int = 3, seed: int = 0) -> Items:
    rng = np.random.default_rng(seed)
    n = n_images * per
    words = ["red", "blue", "circle", "square", "a", "on"]
    texts = [" ".join(rng.choice(words, 5)) for _ in range(n)]
    sound = rng.normal(size=(n, 40, 20)).astype(np.float32)
    logits = rng.normal(size=(n_images, 1000))
    teacher = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return Items([f"c{i}" for i in range(n)],
                 {"image": rng.normal(size=(n_images, 24)).astype(np.float32), "teacher": teacher.astype(np.float32),
                  "sound": SequenceData(lambda cid: sound[int(cid[1:])], [f"c{i}" for i in range(n)], 32, 20,
                                        np.full(n, 32)),
                  "text": TokensData(texts)},
                 frozenset({"image", "teacher"}), groups=[f"g{g}" for g in range(n_images)],
                 group_of=np.repeat(np.arange(n_images), per))


@pytest.mark.parametrize("disjoint", [False, True])
def test_training_never_feeds_a_text_sound_pair(disjoint, monkeypatch):
    items = _items()
    trainer = SeeHearRead(SHRConfig(width=0.03, epochs=2, batch_size=8, sound_frames=32, word_dim=12, disjoint=disjoint),
                          "cpu")
    calls: list[str] = []
    original = SHRModel.forward
    monkeypatch.setattr(SHRModel, "forward", lambda self, modality, x: (calls.append(modality), original(self, modality, x))[1])
    seen: list[tuple[str, set[str], np.ndarray]] = []
    batch_loss = SeeHearRead.batch_loss

    def spy(self, train, batch, epoch):
        calls.clear()
        out = batch_loss(self, train, batch, epoch)
        seen.append((batch[0], set(calls), train.group_of[batch[1]]))
        return out

    monkeypatch.setattr(SeeHearRead, "batch_loss", spy)
    trainer.fit(items)
    assert seen and all(mods == {"image", kind} for kind, mods, _ in seen)  # image + one other, never text + sound
    kinds = [kind for kind, _, _ in seen]
    assert {"text", "sound"} <= set(kinds) and kinds[:2] == ["text", "sound"]  # both pair types, alternating
    text_groups = set(np.concatenate([g for k, _, g in seen if k == "text"]).tolist())
    sound_groups = set(np.concatenate([g for k, _, g in seen if k == "sound"]).tolist())
    assert (text_groups.isdisjoint(sound_groups)) == disjoint  # disjoint: no image bridges a sentence and a sound
    emb = trainer.embed(items)
    assert emb["image"].shape[0] == 12 and emb["sound"].shape[0] == emb["text"].shape[0] == 36
    assert np.allclose(np.linalg.norm(emb["text"], axis=1), 1.0, atol=1e-5)


def test_a_saved_model_embeds_the_same_and_refuses_other_word_vectors():
    items = _items()
    cfg = SHRConfig(width=0.03, epochs=1, batch_size=8, sound_frames=32, word_dim=12)
    trainer = SeeHearRead(cfg, "cpu").fit(items)
    state = trainer.state_dict()
    again = SeeHearRead(cfg, "cpu").load_state_dict(state)
    for k, v in trainer.embed(items).items():
        assert np.allclose(again.embed(items)[k], v, atol=1e-6), k
    with pytest.raises(ValueError, match="differ from those this model was trained with"):
        SeeHearRead(SHRConfig(**{**cfg.__dict__, "word_vectors": "random:1"}), "cpu").load_state_dict(state)


def _first_hit(sim: np.ndarray, relevant: list[set[int]]) -> np.ndarray:
    out = []
    for q, rel in enumerate(relevant):
        order = sorted(range(sim.shape[1]), key=lambda j: (-sim[q, j], j))
        out.append(min(order.index(j) for j in rel))
    return np.array(out)


def test_modality_matrix_matches_a_loop():
    rng = np.random.default_rng(1)
    image_of = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4])
    emb = {"image": rng.normal(size=(5, 6)), "sound": rng.normal(size=(9, 6)), "text": rng.normal(size=(9, 6))}
    m = modality_matrix(emb, image_of, ks=(1, 2))
    assert set(m["matrix"]) == {"image2sound", "sound2image", "image2text", "text2image", "sound2text", "text2sound"}
    unit = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in emb.items()}
    for q, t in (("image", "text"), ("text", "image"), ("sound", "text"), ("text", "sound")):
        sim = unit[q] @ unit[t].T
        if q == "image":
            rel = [set(np.flatnonzero(image_of == i)) for i in range(5)]
        elif t == "image":
            rel = [{int(image_of[i])} for i in range(9)]
        else:
            rel = [{i} for i in range(9)]  # an item's sound <-> its own text
        ranks = _first_hit(sim, rel)
        got = m["matrix"][f"{q}2{t}"]
        assert got["r@1"] == pytest.approx(100 * np.mean(ranks < 1)) and got["medr"] == np.floor(np.median(ranks)) + 1
        assert got["meanr"] == pytest.approx(ranks.mean() + 1)
    assert m["chance"]["text2sound"]["r@1"] == pytest.approx(100 / 9)


def test_chance_median_rank_is_what_random_rankings_get():
    rng = np.random.default_rng(2)
    answers = np.array([1, 1, 3, 5])
    n = 40
    sims = []
    for _ in range(4000):
        q = rng.integers(len(answers))
        sims.append(rng.permutation(n)[:answers[q]].min())
    assert abs(chance_medr(answers, n) - (np.floor(np.median(sims)) + 1)) <= 1
    assert chance_medr(np.ones(1000), 1000) == 500  # the paper's chance level for 1 x 1000


def test_modality_matrix_scores_each_pair_on_the_items_that_have_both():
    rng = np.random.default_rng(5)
    image_of = np.array([0, 0, 1, 1, 2, 3, 4, 5])  # images 0-1: captions (text only); 2-5: videos (sound only)
    emb = {"image": rng.normal(size=(6, 4)), "sound": rng.normal(size=(8, 4)), "text": rng.normal(size=(8, 4))}
    text = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    m = modality_matrix(emb, image_of, present={"text": text, "sound": ~text})
    assert set(m["matrix"]) == {"image2text", "text2image", "image2sound", "sound2image"}  # no item has both
    alone = modality_matrix({"image": emb["image"][2:], "sound": emb["sound"][4:]}, image_of[4:] - 2)
    assert m["matrix"]["sound2image"] == alone["matrix"]["sound2image"]  # the videos among themselves
    assert m["chance"]["image2text"]["medr"] == modality_matrix(
        {"image": emb["image"][:2], "text": emb["text"][:4]}, image_of[:4])["chance"]["image2text"]["medr"]


def test_finetune_cnn_trains_the_image_cnn_on_raw_pictures(monkeypatch):
    from models.common.pictures import ImageCNN

    items = _items(n_images=8, per=2)
    rng = np.random.default_rng(6)
    pictures = [torch.from_numpy(rng.integers(0, 255, (3, 40, 48), dtype=np.uint8)) for _ in range(8)]

    class Reader:
        def __init__(self, idx):
            self.idx = np.asarray(idx)

        def __call__(self, groups):
            return [pictures[int(self.idx[int(g)])] for g in groups]

        def subset(self, groups):
            return Reader(self.idx[np.asarray(groups)])

    items.data["pictures"] = Reader(np.arange(8))
    items.per_group = items.per_group | {"pictures"}

    def tiny() -> torch.nn.Module:
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))

    cnn = ImageCNN(tiny, 4, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 32, "tiny")
    cfg = SHRConfig(width=0.03, epochs=2, batch_size=8, sound_frames=32, word_dim=12, finetune_cnn=True)
    trainer = SeeHearRead(cfg, "cpu", cnn=cnn)
    seen = []
    import models.common.pictures as pics

    original = pics.cnn_input
    monkeypatch.setattr(pics, "cnn_input", lambda *a: (seen.append(a[3]), original(*a))[1])
    trainer.fit(items)
    assert seen and all(seen)  # training: augmented crops of the raw pictures
    start = tiny().state_dict()
    now = trainer.model.cnn.state_dict()
    assert any(not torch.equal(start[k], now[k]) for k in start)  # the CNN itself was trained
    state = trainer.state_dict()
    assert any(k.startswith("cnn.") for k in state["model"])  # and is saved with the model
    again = SeeHearRead(cfg, "cpu", cnn=cnn).load_state_dict(state)
    seen.clear()
    assert np.allclose(again.embed(items)["image"], trainer.embed(items)["image"], atol=1e-6)
    assert seen and not any(seen)  # embedding never augments
    with pytest.raises(ValueError, match="crop_size"):
        SHRConfig(crop_size=64)


def test_items_with_one_modality_each_train_score_and_stay_disjoint():
    items = _items(n_images=12, per=2)
    text = np.tile([True, False], 12)  # each image: one caption with only its text, one with only its sound
    items.present = {"text": text, "sound": ~text}
    cfg = SHRConfig(width=0.03, epochs=1, batch_size=4, sound_frames=32, word_dim=12, disjoint=True, image_form="map")
    items.data["image"] = np.random.default_rng(7).normal(size=(12, 2, 3, 24)).astype(np.float32)  # maps
    trainer = SeeHearRead(cfg, "cpu")
    sets = trainer.pair_sets(items)
    text_groups, sound_groups = set(items.group_of[sets["text"]]), set(items.group_of[sets["sound"]])
    assert text_groups and sound_groups and text_groups.isdisjoint(sound_groups)  # no image gives both kinds
    assert text[sets["text"]].all() and (~text)[sets["sound"]].all()
    trainer.fit(items)
    assert trainer.model.image[0].in_features == 24  # a map averaged over its cells, not flattened
    m = trainer.evaluate(items)
    assert set(m["matrix"]) == {"image2text", "text2image", "image2sound", "sound2image"}  # no item has both
    assert SeeHearRead(SHRConfig(**{**cfg.__dict__, "disjoint": False}), "cpu").pair_sets(items)["text"].tolist() == \
        np.flatnonzero(text).tolist()
