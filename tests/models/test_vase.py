"""VASE branches and trainer: shapes and layers as specified, padding-safe text, learning on a planted
toy problem, and resuming from an epoch checkpoint gives the same model as training straight through."""
import numpy as np
import pytest
import torch

from models.vase import (CaptionData, DavenetEncoder, ImageEncoder, TextEncoder, VASEConfig, VASETrainer,
                         build_vocab, encode_captions, tokenize)

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
