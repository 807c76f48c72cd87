"""VASE branches and trainer: shapes and layers as specified, padding-safe text, learning on a planted
toy problem, and resuming from an epoch checkpoint gives the same model as training straight through."""
import numpy as np
import pytest
import torch

from models.vase.trainer import (
    CaptionData,
    DavenetEncoder,
    ImageCNN,
    ImageEncoder,
    TextEncoder,
    VASEConfig,
    VASETrainer,
    build_vocab,
    encode_captions,
    tokenize,
)

TINY = {"width": 0.125, "embed_size": 32, "max_frames": 128, "batch_size": 8, "lr": 2e-3, "min_word_count": 1}


def test_davenet_layers_and_output():
    enc = DavenetEncoder(embed_size=1024)
    kernels = [(c.in_channels, c.out_channels, c.kernel_size) for c in enc.convs]
    assert kernels == [(1, 128, (40, 1)), (128, 256, (1, 11)), (256, 512, (1, 17)), (512, 512, (1, 17)),
                       (512, 1024, (1, 17))]
    assert isinstance(enc.pool, torch.nn.AvgPool2d) and enc.pool.kernel_size == (1, 3) and enc.pool.stride == (1, 2)
    assert enc.rnn.bidirectional and enc.rnn.hidden_size == 1024 and enc.rnn.input_size == 1024
    small = DavenetEncoder(embed_size=16, width=0.0625)
    out = small(torch.randn(3, 2048, 40))
    assert out.shape == (3, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_davenet_downsamples_time_by_16_before_the_gru():
    enc = DavenetEncoder(embed_size=8, width=0.0625)
    seen = {}
    enc.rnn.register_forward_hook(lambda m, inp, out: seen.update(steps=inp[0].shape[1]))
    enc(torch.randn(2, 2048, 40))
    assert seen["steps"] == 128  # the reference's [B, 1024, 128] for 2048 frames


def test_image_branch_is_l2norm_linear_l2norm():
    enc = ImageEncoder(4096, 64)
    x = torch.rand(5, 4096)
    y = enc(x)
    assert torch.allclose(y.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(enc(x * 7.0), y, atol=1e-5)  # the input is l2-normalised first
    assert enc.fc.bias.abs().sum() == 0


def test_text_branch_ignores_padding_and_vocab_comes_from_captions():
    vocab = build_vocab(["a red circle", "a blue square", "a red square", "zebra"], min_count=2)
    assert vocab[:4] == ["<pad>", "<start>", "<end>", "<unk>"] and "red" in vocab and "zebra" not in vocab
    assert tokenize("A red, big circle.") == ["a", "red", ",", "big", "circle", "."]
    enc = TextEncoder(len(vocab), 12, 16)
    ids, lengths = encode_captions(["a red circle", "a red square on a blue square"], vocab)
    alone_ids, alone_len = encode_captions(["a red circle"], vocab)
    both = enc(ids, lengths)
    alone = enc(alone_ids, alone_len)
    assert ids[0, 0] == vocab.index("<start>") and ids[0, lengths[0] - 1] == vocab.index("<end>")
    assert torch.allclose(both[0], alone[0], atol=1e-6)  # padding to the longer caption changes nothing


def _planted(n_img: int, per: int, seed: int) -> CaptionData:
    """Each image is a one-hot-ish vector; its captions are log-mel of a per-image tone pattern + noise."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(99).normal(size=(64, 40)).astype(np.float32) * 3
    image_of = np.repeat(np.arange(n_img), per)
    mel = np.stack([np.tile(protos[i], (128, 1)) + rng.normal(size=(128, 40)) for i in image_of]).astype(np.float32)
    images = np.abs(np.eye(n_img, 64) + 0.05 * rng.normal(size=(n_img, 64))).astype(np.float32)
    words = [f"thing{i}" for i in image_of]
    return CaptionData([str(i) for i in range(len(image_of))], image_of, images, lambda idx: mel[idx], words,
                       [str(i) for i in range(n_img)])


def test_trainer_learns_a_planted_pairing_far_above_chance():
    data = _planted(12, 3, 0)
    tr = VASETrainer({**TINY, "epochs": 8}, "cpu").fit_pairs(data, data)
    m = tr.evaluate(data)
    chance = sum(v for d in ("image2speech", "speech2image") for v in m["chance"][d].values())
    assert m["rsum"] > chance + 150, (m["rsum"], chance)
    assert tr.history["loss"][-1] < tr.history["loss"][0]
    assert 0 <= tr.best_epoch < 8 and m["rsum"] <= 600


def test_resume_from_a_checkpoint_equals_training_straight_through():
    data = _planted(6, 2, 1)
    straight = VASETrainer({**TINY, "epochs": 4, "streams": 3}, "cpu").fit_pairs(data, data)
    saved = {}

    class Stop(Exception):
        pass

    def stop_after_two(tr, improved):
        saved["ckpt"] = tr.checkpoint()
        if tr.epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        VASETrainer({**TINY, "epochs": 4, "streams": 3}, "cpu").fit_pairs(data, data, on_epoch=stop_after_two)
    resumed = VASETrainer({**TINY, "epochs": 4, "streams": 3}, "cpu").resume(saved["ckpt"]).fit_pairs(data, data)
    assert resumed.history["loss"] == pytest.approx(straight.history["loss"], rel=1e-5)
    for k, v in straight.state_dict()["model"].items():
        assert torch.allclose(v, resumed.state_dict()["model"][k], atol=1e-6), k


def test_state_round_trips_through_weights_only_load(tmp_path):
    data = _planted(4, 2, 2)
    tr = VASETrainer({**TINY, "epochs": 1, "streams": 3}, "cpu").fit_pairs(data, data)
    torch.save(tr.state_dict(), tmp_path / "m.pt")
    back = VASETrainer({**TINY, "epochs": 1, "streams": 3}, "cpu").load_state_dict(
        torch.load(tmp_path / "m.pt", weights_only=True))
    a, b = tr.encode(data), back.encode(data)
    assert back.vocab == tr.vocab and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_init_from_a_two_stream_model_needs_matching_branches():
    data = _planted(4, 2, 3)
    two = VASETrainer({**TINY, "epochs": 1}, "cpu").fit_pairs(data, data)
    three = VASETrainer({**TINY, "streams": 3}, "cpu").build(64, ["<pad>", "<start>", "<end>", "<unk>"])
    with pytest.raises(ValueError, match="lack"):
        three.init_from(two.state_dict())
    again = VASETrainer({**TINY, "lr": 1e-5}, "cpu").build(64).init_from(two.state_dict())
    assert np.allclose(again.encode(data)["speech"], two.encode(data)["speech"], atol=1e-6)


def test_config_checks_and_default_smoothing():
    assert VASEConfig(streams=2).smoothing == 6.0 and VASEConfig(streams=3).smoothing == 4.0
    assert VASEConfig(smooth=1.5).smoothing == 1.5
    with pytest.raises(ValueError, match="batch_size"):
        VASEConfig(batch_size=1)


def _tiny_cnn() -> torch.nn.Module:
    torch.manual_seed(5)  # the same initial weights every build, as a pretrained CNN would have
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                               torch.nn.Flatten(1), torch.nn.Linear(32, 16), torch.nn.ReLU())


CNN = ImageCNN(_tiny_cnn, 16, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), crop_size=24)


def _with_pictures(n_img: int, per: int, seed: int) -> tuple[CaptionData, list[torch.Tensor]]:
    """The planted captions, each image also a raw picture (uint8 [3, 30, 40]); stored features are the
    tiny CNN's output on the centre crop, as an extract stage would have stored them."""
    data = _planted(n_img, per, seed)
    rng = np.random.default_rng(seed)
    pics = [torch.from_numpy(rng.integers(0, 256, (3, 30, 40), dtype=np.uint8)) for _ in range(n_img)]
    mean, std = torch.tensor(CNN.mean).view(3, 1, 1), torch.tensor(CNN.std).view(3, 1, 1)
    crops = torch.stack([(p[:, 3:27, 8:32].float() / 255 - mean) / std for p in pics])
    with torch.no_grad():
        data.images = CNN.build()(crops).numpy()
    data.pictures = lambda idx: [pics[int(i)] for i in idx]
    return data, pics


def test_finetune_cnn_trains_the_cnn_on_augmented_pictures():
    data, pics = _with_pictures(6, 2, 4)
    tr = VASETrainer({**TINY, "epochs": 2, "finetune_cnn": True}, "cpu", cnn=CNN)
    seen: list[tuple[bool, torch.Tensor]] = []
    tr.build(16)
    tr.model.image.cnn.register_forward_hook(lambda m, inp, out: seen.append((m.training, inp[0].detach().clone())))
    tr.fit_pairs(data, data)
    train_in = [x for training, x in seen if training]
    eval_in = [x for training, x in seen if not training]
    assert train_in and all(x.shape[1:] == (3, 24, 24) for x in train_in)
    # evaluation sees the centre crop, normalised with the CNN's mean and std, the same every time
    mean, std = torch.tensor(CNN.mean).view(3, 1, 1), torch.tensor(CNN.std).view(3, 1, 1)
    assert torch.allclose(eval_in[0][0], (pics[0][:, 3:27, 8:32].float() / 255 - mean) / std, atol=1e-6)
    assert torch.equal(eval_in[0], eval_in[-1])
    # training sees random crops and flips: no training input is a centre crop
    centre = eval_in[0]
    assert not any(torch.allclose(x[0], c, atol=1e-3) for x in train_in for c in centre)
    # the CNN's weights moved (end to end), from the CNN's own initial weights
    fresh = CNN.build().state_dict()
    cnn_keys = [k for k in tr.state_dict()["model"] if k.startswith("image.cnn.")]
    assert len(cnn_keys) == len(fresh)
    assert any(not torch.allclose(tr.state_dict()["model"][k], fresh[k.removeprefix("image.cnn.")]) for k in cnn_keys)


def test_finetune_cnn_starts_where_a_stored_feature_model_left_off():
    data, _ = _with_pictures(6, 2, 5)
    stage1 = VASETrainer({**TINY, "epochs": 2}, "cpu").fit_pairs(data, data)
    stage2 = VASETrainer({**TINY, "finetune_cnn": True, "lr": 1e-5}, "cpu", cnn=CNN).build(16).init_from(
        stage1.state_dict())
    a, b = stage1.encode(data), stage2.encode(data)
    # the CNN on the centre crop reproduces the stored features, so every embedding agrees before any step
    assert np.allclose(a["image"], b["image"], atol=1e-5) and np.allclose(a["speech"], b["speech"], atol=1e-6)


def test_finetune_cnn_resumes_with_the_same_augmentation():
    data, _ = _with_pictures(6, 2, 6)
    cfg = {**TINY, "epochs": 3, "finetune_cnn": True}
    straight = VASETrainer(cfg, "cpu", cnn=CNN).fit_pairs(data, data)
    saved = {}

    class Stop(Exception):
        pass

    def stop_after_one(tr, improved):
        saved["ckpt"] = tr.checkpoint()
        raise Stop

    with pytest.raises(Stop):
        VASETrainer(cfg, "cpu", cnn=CNN).fit_pairs(data, data, on_epoch=stop_after_one)
    resumed = VASETrainer(cfg, "cpu", cnn=CNN).resume(saved["ckpt"]).fit_pairs(data, data)
    assert resumed.history["loss"] == pytest.approx(straight.history["loss"], rel=1e-5)
    for k, v in straight.state_dict()["model"].items():
        assert torch.allclose(v, resumed.state_dict()["model"][k], atol=1e-6), k


def test_a_cnn_with_auxiliary_outputs_in_training_is_fine_tuned_on_its_main_output():
    from extractors.inception_v3 import InceptionV3, InceptionV3Config
    from models.vase.trainer import CNNImageEncoder

    enc = CNNImageEncoder(InceptionV3(InceptionV3Config(weights="random:0")).network(), 2048, 8).train()
    out = enc(torch.randn(2, 3, 75, 75))  # torchvision's Inception-V3 returns (main, aux) in training mode
    assert out.shape == (2, 8) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


def test_finetune_cnn_needs_the_cnn_and_the_pictures():
    with pytest.raises(ValueError, match="pass the CNN"):
        VASETrainer({**TINY, "finetune_cnn": True}, "cpu").fit_pairs(_planted(4, 2, 7), None)
    with pytest.raises(ValueError, match="needs finetune_cnn"):
        VASEConfig(crop_size=64)
    data = _planted(4, 2, 7)
    data.images = data.images[:, :16]
    with pytest.raises(ValueError, match="without them"):
        VASETrainer({**TINY, "finetune_cnn": True}, "cpu", cnn=CNN).fit_pairs(data, data)


def test_the_reconstruction_temperature_is_the_smooth_param():
    torch.manual_seed(0)
    views = [torch.nn.functional.normalize(torch.randn(6, 8), dim=1) for _ in range(2)]
    losses = {s: VASETrainer({**TINY, "smooth": s}, "cpu").loss(views)[2] for s in (1.0, 6.0, 30.0)}
    assert len({round(v, 6) for v in losses.values()}) == 3
    default = VASETrainer(TINY, "cpu").loss(views)[2]
    assert default == pytest.approx(losses[6.0])  # two streams: VASE's 6
