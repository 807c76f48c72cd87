"""See, Hear, and Read end to end on generated spoken shapes: trained on image+text and image+sound pairs only,
text <-> sound retrieval far better than chance (the paper's transfer result in miniature), the run's stores and
the report."""
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import open_store
from pipeline.runner import run

from ..conftest import write_config

CORPUS = {"n_images": 150, "captions_per_image": 2, "n_val": 10, "n_test": 15, "size": 64, "seed": 1}
SHR = {"width": 0.0625, "epochs": 30, "batch_size": 16, "lr": 1.0e-3, "sound_frames": 200}
STAGES = {
    "audio": {"group": "extract", "implementation": "audio", "params": {"sample_rate": 16000}},
    "spectrogram": {"group": "extract", "implementation": "logmel", "upstream": ["audio"], "params": {"preset": "spectrogram"}},
    "vgg16": {"group": "extract", "implementation": "vgg16", "params": {"weights": "random:0", "crop_size": 32}},
    "vgg16-logits": {"group": "extract", "implementation": "vgg16",
                     "params": {"weights": "random:0", "crop_size": 32, "layer": "logits"}},
    "see-hear-read": {"group": "train", "implementation": "see-hear-read",
                      "upstream": ["spectrogram", "vgg16", "vgg16-logits"],
                      "views": {"image": "vgg16", "teacher": "vgg16-logits", "sound": "spectrogram"}, "params": SHR},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("shr")
    cfg = write_config(tmp / "stages.yaml", tmp / "cache",
                       {"shapes": {"adapter": "spoken_shapes", "root": str(tmp / "shapes"), "params": CORPUS}}, STAGES,
                       execution={"workers": 1, "shard_size": 64, "progress": False})
    report = run("train", stage="see-hear-read", config=cfg)[-1]
    return cfg, report


def test_text_to_sound_emerges_without_a_text_sound_pair(trained):
    _, report = trained
    m = report.metrics
    assert m["task"] == "modalities" and m["n_images"] == 15 and m["n_items"] == 30
    mat, chance = m["matrix"], m["chance"]
    assert set(mat) == {f"{a}2{b}" for a in ("image", "sound", "text") for b in ("image", "sound", "text") if a != b}
    for d in ("image2text", "text2image", "image2sound", "sound2image"):  # the trained pairs (15 images: chance medr 8;
        # with one torch thread instead of two, sound->image came out at medr 5, R@10 93 against 67)
        assert mat[d]["medr"] <= 0.75 * chance[d]["medr"] and mat[d]["r@10"] > chance[d]["r@10"] + 15, (d, mat[d], chance[d])
    for d in ("text2sound", "sound2text"):  # never trained: the transfer through the images
        assert chance[d]["medr"] == 15  # a random ranking of 30 items
        # measured with the trainer's seed 0, 1, 2: 9 / 7, 6 / 5, 5 / 4 (sound->text / text->sound)
        assert mat[d]["medr"] <= 0.65 * chance[d]["medr"], (d, mat[d])


def test_the_run_holds_every_modality_and_its_pictures(trained):
    cfg, report = trained
    run_dir = report.run_dir
    assert (run_dir / "modality_matrix.png").stat().st_size > 5000
    assert (run_dir / "training_curve.png").exists()
    params = (run_dir / "params.yaml").read_text()
    assert "never text+sound" in params and "random:0" in params
    image = open_store(run_dir / "embeddings" / "image")
    sound = open_store(run_dir / "embeddings" / "sound")
    text = open_store(run_dir / "embeddings" / "text")
    ids = list(sound.clip_ids)
    assert len(ids) == 300 and set(ids) == set(text.clip_ids) == set(image.clip_ids)
    a, b = ids[0], ids[1]  # two captions of one picture share its image row
    assert np.array_equal(image[a], image[b]) and not np.array_equal(sound[a], sound[b])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_epoch"] >= 1 and metrics["rsum"] > metrics["chance_rsum"]


def test_report_shows_the_query_by_target_matrix(trained, tmp_path):
    from pipeline.report import collect, format_text, write_html

    cfg, report = trained
    rows = [r for r in collect(report.run_dir.parents[2]) if r["task"] == "modalities"]
    assert len(rows) == 1 and rows[0]["random_weights"]
    text = format_text(rows)
    assert "median rank (chance)" in text and text.splitlines()[-1].startswith("text")  # rows: query modalities
    m = report.metrics
    assert f"{m['matrix']['text2sound']['medr']:.0f} ({m['chance']['text2sound']['medr']:.0f})" in text
    page = write_html(rows, tmp_path / "report.html").read_text()
    assert "Image, sound and text" in page and "text&rarr;sound" in page and "data:image/png;base64" in page


def test_a_mix_of_a_caption_corpus_and_a_video_corpus_trains_one_run(tmp_path, tiny_synthetic_root, monkeypatch):
    from models.shr.trainer import SeeHearRead
    from tests.conftest import TINY

    stages = {**STAGES, "see-hear-read": {**STAGES["see-hear-read"],
                                          "params": {**SHR, "epochs": 2, "batch_size": 4}}}
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache", {
        "captions": {"adapter": "spoken_scenes", "root": str(tmp_path / "scenes"),
                     "params": {"n_train": 8, "n_val": 4, "captions_per_image": 2, "size": 64, "speech": False,
                                "layout": "coco_captions"}},
        "videos": {"adapter": "synthetic", "root": str(tiny_synthetic_root), "params": TINY},
        "both": {"adapter": "mix", "root": str(tmp_path),
                 "params": {"parts": ["captions", "videos"], "val_fraction": 0.2, "test_fraction": 0.2}}}, stages,
        execution={"workers": 1, "shard_size": 64, "progress": False})
    fed: list[tuple[str, list[str]]] = []
    batch_loss = SeeHearRead.batch_loss

    def spy(self, train, batch, epoch):
        fed.append((batch[0], [train.ids[int(i)] for i in batch[1]]))
        return batch_loss(self, train, batch, epoch)

    monkeypatch.setattr(SeeHearRead, "batch_loss", spy)
    report = run("train", dataset="both", stage="see-hear-read", config=cfg)[-1]
    # image-text batches hold only the caption corpus's items, image-sound batches only the videos
    assert {k for k, _ in fed} == {"text", "sound"}
    assert all(i.startswith("captions/") for k, ids in fed if k == "text" for i in ids)
    assert all(i.startswith("videos/") for k, ids in fed if k == "sound" for i in ids)
    m = report.metrics
    assert set(m["matrix"]) == {"image2text", "text2image", "image2sound", "sound2image"}  # no item has both
    assert m["left_out"] == 0  # a picture without sound and a video without text are items all the same
    with np.load(report.run_dir / "test_embeddings.npz") as z:
        ids, has_text, has_sound = z["clip_ids"], z["present_text"], z["present_sound"]
    assert all(i.startswith("captions/") for i in ids[has_text]) and all(i.startswith("videos/") for i in ids[has_sound])
    assert has_text.any() and has_sound.any() and not (has_text & has_sound).any()
    sound = open_store(report.run_dir / "embeddings" / "sound")  # no made-up rows for captions without sound
    text = open_store(report.run_dir / "embeddings" / "text")
    assert sound.clip_ids and all(i.startswith("videos/") for i in sound.clip_ids)
    assert text.clip_ids and all(i.startswith("captions/") for i in text.clip_ids)
