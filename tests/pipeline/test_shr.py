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


# -- `pipeline serve` on this run: search from each modality, bad input, the page in Chromium ----------------------

@pytest.fixture(scope="module")
def served_run(trained):
    from ..serving import served

    cfg, report = trained
    with served(cfg) as base:
        yield base, report.run_dir, cfg


def _test_clips(cfg: Path) -> list:
    from pipeline.config import load_config
    from pipeline.runner.stagekeys import make_adapter

    return make_adapter(load_config(cfg), "shapes").manifest().clips


def test_typed_sentences_rank_the_test_images_as_the_stored_embeddings_do(served_run):
    """A typed caption goes through the run's text branch (as `pipeline embed` would) and is ranked against the test
    images: the rank of its picture on the page equals the rank computed from the run's own stores."""
    import re

    from ..serving import get

    base, run_dir, cfg = served_run
    image, text = open_store(run_dir / "embeddings" / "image"), open_store(run_dir / "embeddings" / "text")
    clips = {c.clip_id: c for c in _test_clips(cfg)}
    captions: dict[str, set] = {}
    for c in clips.values():
        captions.setdefault(c.text[0], set()).add(c.group)
    queries = [c for c in clips.values() if c.split == "test" and len(captions[c.text[0]]) == 1]  # one right picture
    assert len(queries) >= 10
    gallery = {}  # group -> its first item's image row, in store order: the test pictures the page ranks
    for cid in image.clip_ids:
        if clips[cid].split == "test":
            gallery.setdefault(clips[cid].group, image[cid][0])
    groups, g_emb = list(gallery), np.stack(list(gallery.values()))
    in_top10 = 0
    for q in queries:
        scores = g_emb @ text[q.clip_id][0]
        expected = 1 + int(np.sum(scores > scores[groups.index(q.group)]))
        status, page = get(base, f"/runs/shapes/{run_dir.name}/search", q=q.text[0], to="image", scope="test", k=15)
        assert status == 200, page
        m = re.search(r"The right one is at rank (\d+)", page)
        assert m and int(m.group(1)) == expected, (q.text[0], expected, m and m.group(0))
        in_top10 += expected <= 10
    assert in_top10 >= 0.6 * len(queries)  # most queries: the run's text->image R@10 is far above chance


def test_the_page_in_chromium_searches_from_text_sound_and_items(served_run, tmp_path):
    from ..serving import chromium, fits

    base, run_dir, cfg = served_run
    clip = next(c for c in _test_clips(cfg) if c.split == "test")
    with chromium() as page:
        page.goto(base + "/")
        assert fits(page)
        page.click(f"a[href='/runs/shapes/{run_dir.name}']")
        page.fill("#text-search input[name=q]", clip.text[0])
        page.select_option("#text-search select[name=to]", "image")
        page.click("#text-search button")
        rows = page.locator("#results tr.result")
        assert rows.count() == 10 and page.locator("#results tr.result img").count() == 10
        assert page.locator("#results tr.right").count() <= 1 and fits(page)
        page.screenshot(path=str(tmp_path / "results.png"))
        assert (tmp_path / "results.png").stat().st_size > 10_000
        # an uploaded spoken caption returns texts
        page.goto(f"{base}/runs/shapes/{run_dir.name}")
        page.set_input_files("#audio-search input[type=file]", str(clip.media["audio"]))
        page.select_option("#audio-search select[name=to]", "text")
        page.click("#audio-search button")
        texts = page.locator("#results tr.result td.wrap").all_inner_texts()
        assert len(texts) == 10 and all(t.strip() for t in texts)
        corpus = {c.text[0] for c in _test_clips(cfg)}
        assert all(any(t.startswith(c) for c in corpus) for t in texts)
        # an uploaded picture returns texts too
        page.goto(f"{base}/runs/shapes/{run_dir.name}")
        page.set_input_files("#image-search input[type=file]", str(clip.media["image"]))
        page.select_option("#image-search select[name=to]", "text")
        page.click("#image-search button")
        assert page.locator("#results tr.result").count() == 10
        # "more like this" from a result: an item query, with its ground truth marked
        page.click("#results tr.result >> nth=0 >> text=more like this")
        assert page.locator("#results tr.result").count() == 10
        # a file that is not sound: its message on the page, and a 400
        bad = tmp_path / "notes.wav"
        bad.write_text("these are my notes, not a recording")
        page.goto(f"{base}/runs/shapes/{run_dir.name}")
        page.set_input_files("#audio-search input[type=file]", str(bad))
        with page.expect_navigation() as nav:
            page.click("#audio-search button")
        assert nav.value.status == 400
        assert "not a readable audio file" in page.inner_text("[role=alert]")


def test_bad_requests_get_a_message_and_a_4xx(served_run):
    from ..serving import alert, get, post_file, request

    base, run_dir, cfg = served_run
    port = int(base.rsplit(":", 1)[1])
    url = f"/runs/shapes/{run_dir.name}"
    for path in (f"{url}/files/../../../../etc/passwd", f"{url}/files/..%2f..%2f..%2fstages.yaml",
                 "/runs/shapes/..%2f..%2fstores/search", f"{url}/files/%2fetc%2fpasswd"):
        status, body = request("127.0.0.1", port, "GET", path)
        assert 400 <= status < 500 and "root:" not in body and "datasets:" not in body, (path, status)
    status, body = get(base, "/media/shapes", id="../../etc/passwd", role="image")
    assert status == 404 and "no item" in alert(body)
    assert get(base, f"{url}/search", q="   ", to="image")[0] == 400
    status, body = get(base, f"{url}/search", q="a red circle", to="visual")
    assert status == 400 and "has no visual embeddings" in alert(body)
    status, body = get(base, "/runs/shapes/no-such-run")
    assert status == 404
    clip = next(c for c in _test_clips(cfg) if c.split == "test")
    status, body = get(base, f"{url}/search", item=clip.clip_id, source="image", to="text", scope="test")
    assert status == 200 and '<p id="query">Query: <img' in body  # the query item's own picture
    status, body = request("127.0.0.1", port, "POST", f"{url}/search", b"x",
                           {"Content-Length": str(60 * 1024 * 1024), "Content-Type": "multipart/form-data; boundary=b"})
    assert status == 413 and "over 50 MB" in alert(body)
    status, body = post_file(base, f"{url}/search", {"kind": "image", "to": "text"}, ("empty.png", b""))
    assert status == 400 and "empty" in alert(body)
    status, body = post_file(base, f"{url}/search", {"kind": "image", "to": "text"}, ("x.png", b"\x89PNG not really"))
    assert status == 400 and "not a readable image file" in alert(body)
    status, body = post_file(base, f"{url}/search", {"kind": "video", "to": "text"}, ("x.mp4", b"abc"))
    assert status == 400
    incomplete = run_dir.parent / "see-hear-read-0000000000000000"
    incomplete.mkdir()
    (incomplete / "params.yaml").write_text((run_dir / "params.yaml").read_text())
    try:
        status, body = get(base, f"/runs/shapes/{incomplete.name}")
        assert status == 409 and "not complete" in alert(body)
    finally:
        import shutil

        shutil.rmtree(incomplete)


def test_embed_sounds_and_images_equal_the_runs_own_embeddings(trained, tmp_path):
    """`pipeline embed` (the code path serve's uploads take) on the corpus's own files gives the stored rows."""
    from ..conftest import cli

    cfg, report = trained
    clips = [c for c in _test_clips(cfg) if c.split == "test"][:4]
    (tmp_path / "sounds").mkdir()
    (tmp_path / "images").mkdir()
    for c in clips:
        (tmp_path / "sounds" / f"{c.clip_id.replace('/', '_')}.wav").write_bytes(Path(c.media["audio"]).read_bytes())
        (tmp_path / "images" / f"{c.clip_id.replace('/', '_')}.png").write_bytes(Path(c.media["image"]).read_bytes())
    cli("embed", "--run", str(report.run_dir), "--sounds", str(tmp_path / "sounds"), "--images",
        str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--device", "cpu")
    for modality, folder in (("sound", "sounds"), ("image", "images")):
        new, own = open_store(tmp_path / "out" / modality), open_store(report.run_dir / "embeddings" / modality)
        for c in clips:
            name = f"{c.clip_id.replace('/', '_')}.{'wav' if folder == 'sounds' else 'png'}"
            assert np.abs(new[name][0] - own[c.clip_id][0]).max() < 1e-4, (modality, c.clip_id)


def test_serve_opens_on_one_run_and_refuses_one_outside_the_cache(trained, tmp_path):
    from fastapi.testclient import TestClient

    from pipeline.config import load_config
    from pipeline.serve import ServeError, create_app

    from ..conftest import cli

    cfg, report = trained
    client = TestClient(create_app(load_config(cfg), run=report.run_dir))
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == f"/runs/shapes/{report.run_dir.name}"
    with pytest.raises(ServeError, match="leaves its folder"):
        create_app(load_config(cfg), run=tmp_path)
    res = cli("serve", "--config", str(cfg), "--run", str(tmp_path), check=False)
    assert res.returncode == 2 and "leaves its folder" in res.stderr and "Traceback" not in res.stderr
