"""CLIP and CLAP (transformers) end to end: tiny random checkpoints saved here in the library's own format and
loaded by path; each stage's rows against the library's own forward pass on the same input; the zero-shot runs;
TNN-C-CCA on CLIP + CLAP features; where weights are looked for, and what a user is told when they are not."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import open_store
from pipeline.runner import run

from ..conftest import SHAPES, TINY, cli, write_config

WINDOW_S = 0.5  # CLAP windows of the test checkpoint: a spoken caption (~1-2 s) makes 2-4 rows


def _byte_vocab(clip: bool) -> dict[str, int]:
    from extractors.hf import byte_vocab

    if clip:
        return byte_vocab(["<|startoftext|>", "<|endoftext|>"], "</w>")
    vocab = byte_vocab(["<s>", "<pad>", "</s>", "<unk>"])
    vocab["<mask>"] = len(vocab)
    return vocab


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny CLIP and a tiny CLAP, random, each saved with its processor by `save_pretrained` (sizes unlike
    the pipeline's own random:SEED model, so the checkpoint's own config and processor must be the ones read)."""
    from transformers import (
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        RobertaTokenizer,
    )

    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(1)
    clip = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=514, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=130, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=48, patch_size=16, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=24))
    clip.save_pretrained(root / "clip")
    CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}),
                  CLIPTokenizer(vocab=_byte_vocab(True), merges=[])).save_pretrained(root / "clip")
    clap = ClapModel(ClapConfig(
        text_config=dict(vocab_size=261, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=130, projection_dim=24, bos_token_id=0, pad_token_id=1,
                         eos_token_id=2),
        audio_config=dict(depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], patch_embeds_hidden_size=8,
                          hidden_size=64, projection_dim=24),
        projection_dim=24))
    clap.save_pretrained(root / "clap")
    ClapProcessor(ClapFeatureExtractor(truncation="rand_trunc", max_length_s=1),
                  RobertaTokenizer(vocab=_byte_vocab(False), merges=[])).save_pretrained(root / "clap")
    return {"clip": root / "clip", "clap": root / "clap"}


def encoder_stages(clip: str, clap: str, window_s: float | None = WINDOW_S) -> dict:
    """The encoder stages of stages.yaml, pointed at the given weights (tiny test settings)."""
    return {
        "audio-48k": {"group": "extract-encoders", "implementation": "audio", "params": {"sample_rate": 48000}},
        "clip-frames": {"group": "extract-encoders", "implementation": "clip", "params": {"weights": clip, "fps": 1.0}},
        "clip-text": {"group": "extract-encoders", "implementation": "clip_text", "params": {"weights": clip}},
        "clap-audio": {"group": "extract-encoders", "implementation": "clap", "upstream": ["audio-48k"],
                       "params": {"weights": clap, "window_s": window_s}},
        "clap-text": {"group": "extract-encoders", "implementation": "clap_text", "params": {"weights": clap}},
        "clip-zero-shot": {"group": "encoders", "implementation": "zero-shot-image-text",
                           "upstream": ["clip-frames", "clip-text"]},
        "clap-zero-shot": {"group": "encoders", "implementation": "zero-shot-sound-text",
                           "upstream": ["clap-audio", "clap-text"]},
        "cca-clip-clap": {"group": "encoders", "implementation": "cca", "upstream": ["clap-audio", "clip-frames"],
                          "params": {"n_components": 2}},
        "tnn-ccca-clip-clap": {"group": "encoders", "implementation": "tnn_ccca", "upstream": ["clap-audio", "clip-frames"],
                               "params": {"epochs": 2, "hidden": 8, "out_dim": 4, "n_components": 2}},
        "evaluate-clip-clap": {"group": "encoders", "implementation": "retrieval",
                               "upstream": ["cca-clip-clap", "tnn-ccca-clip-clap"], "params": {"ks": [1, 5]}},
    }


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def test_each_stage_equals_the_library_forward_on_the_same_input(tmp_path, shapes_root, checkpoints):
    from PIL import Image
    from transformers import AutoProcessor, ClapModel, CLIPModel

    mine = {a: shutil.copytree(checkpoints[a], tmp_path / "ckpt" / a) for a in ("clip", "clap")}  # altered below
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"shapes": {"adapter": "spoken_shapes", "root": str(shapes_root), "params": SHAPES}},
                       encoder_stages(str(mine["clip"]), str(mine["clap"])))
    run("extract-encoders", config=cfg)
    items = {s: open_store(dataset="shapes", stage=s, config=cfg) for s in
             ("clip-frames", "clip-text", "audio-48k", "clap-audio", "clap-text")}
    clips = SHAPES_MANIFEST(shapes_root)

    clip, clip_proc = CLIPModel.from_pretrained(checkpoints["clip"]).eval(), AutoProcessor.from_pretrained(checkpoints["clip"])
    clap, clap_proc = ClapModel.from_pretrained(checkpoints["clap"]).eval(), AutoProcessor.from_pretrained(checkpoints["clap"])
    diffs: dict[str, float] = {}
    with torch.inference_mode():
        for c in clips:
            picture = np.asarray(Image.open(c.media["image"]).convert("RGB"))
            ref = clip.get_image_features(**clip_proc(images=picture, return_tensors="pt")).pooler_output.numpy()
            diffs["clip-frames"] = max(diffs.get("clip-frames", 0), max_diff(items["clip-frames"][c.clip_id], ref))
            for stage, model, proc in (("clip-text", clip, clip_proc), ("clap-text", clap, clap_proc)):
                enc = proc.tokenizer([c.text[0]], return_tensors="pt")  # alone: no padding, unlike the stage's batches
                ref = model.get_text_features(**enc).pooler_output.numpy()
                diffs[stage] = max(diffs.get(stage, 0), max_diff(items[stage][c.clip_id], ref))
            wave = items["audio-48k"][c.clip_id]
            size = int(WINDOW_S * 48000)
            windows = [wave[i:i + size] for i in range(0, len(wave) - size // 2, size)] or [wave]
            feats = clap_proc.feature_extractor(windows, sampling_rate=48000, return_tensors="pt")
            ref = clap.get_audio_features(**feats).pooler_output.numpy()
            diffs["clap-audio"] = max(diffs.get("clap-audio", 0), max_diff(items["clap-audio"][c.clip_id], ref))
    from extractors.hf import resolve_checkpoint

    print("max abs difference to the library's forward, fp32:", diffs)
    print("checkpoint digests:", {a: resolve_checkpoint(str(checkpoints[a]), a).digest for a in ("clip", "clap")})
    assert set(diffs) == {"clip-frames", "clip-text", "clap-text", "clap-audio"}
    assert all(d < 1e-5 for d in diffs.values()), diffs
    # the same input: the stage decoded the very pixels PIL reads (PNG), and cut speech into several windows
    from extractors._frames import decode_frames
    from extractors.clip import ClipImage

    ex = ClipImage(ClipImage.Config(weights=str(checkpoints["clip"])))
    assert np.array_equal(decode_frames(ex, clips[0], 1.0)[0], np.asarray(Image.open(clips[0].media["image"]).convert("RGB")))
    assert max(len(items["clap-audio"][c.clip_id]) for c in clips) >= 2
    # a picture that is not square, larger than the input: the stage resizes and crops it in its decode thread
    from pipeline.datasets import Clip

    wide = tmp_path / "wide.png"
    pixels = np.random.default_rng(0).integers(0, 256, (61, 150, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(wide)
    (ours,) = ex.compute([ex.load(Clip("wide", {"image": wide}))])
    with torch.inference_mode():
        ref = clip.get_image_features(**clip_proc(images=pixels, return_tensors="pt")).pooler_output.numpy()
    assert max_diff(ours, ref) < 1e-5
    # a long transcript is cut at 77 tokens, as LAION-CLAP tokenizes (its RoBERTa table would take 128 here)
    from extractors.clap import ClapText

    long = "a red circle beside a blue square " * 8
    (ours,) = ClapText(ClapText.Config(weights=str(mine["clap"]))).compute([long])
    with torch.inference_mode():
        enc = clap_proc.tokenizer([long], truncation=True, max_length=77, return_tensors="pt")
        ref = clap.get_text_features(**enc).pooler_output.numpy()
    assert enc["input_ids"].shape[1] == 77 and max_diff(ours, ref) < 1e-5

    # a query meets the run's own weights, or is refused: the checkpoint altered after the run, `pipeline embed` says so
    from pipeline.query import QueryError, RunQueries

    (report,) = [r for r in run("encoders", stage="clip-zero-shot", config=cfg) if hasattr(r, "run_dir")]
    assert RunQueries(report.run_dir).embed("text", [clips[0].text[0]]).shape == (1, 24)
    config = json.loads((mine["clip"] / "config.json").read_text())
    (mine["clip"] / "config.json").write_text(json.dumps({**config, "logit_scale_init_value": 1.0}))
    with pytest.raises(QueryError, match="now resolve to"):
        RunQueries(report.run_dir).embed("text", [clips[0].text[0]])
    attrs = items["clap-audio"].attrs
    assert attrs["frame_rate"] == 1 / WINDOW_S and attrs["random_weights"] is False and attrs["dims"] == [24]


def SHAPES_MANIFEST(root: Path) -> list:
    from pipeline.datasets.spoken_shapes import SpokenShapesConfig, SpokenShapesDataset

    return SpokenShapesDataset("shapes", root, SpokenShapesConfig(**SHAPES)).manifest().clips


def test_zero_shot_runs_and_tnn_ccca_on_clip_and_clap_from_the_cli(tmp_path, shapes_root, tiny_synthetic_root):
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"shapes": {"adapter": "spoken_shapes", "root": str(shapes_root), "params": SHAPES,
                                   "weights": "random:0"},
                        "tiny": {"adapter": "synthetic", "root": str(tiny_synthetic_root), "params": TINY,
                                 "weights": "random:0"}},
                       encoder_stages("openai/clip-vit-base-patch32", "laion/clap-htsat-unfused", None))
    out = cli("run", "encoders", "--dataset", "shapes", "--config", str(cfg), "--no-progress")
    text = out.stdout + out.stderr
    assert "clip-zero-shot: trained" in text and "clap-zero-shot: trained" in text
    assert "image->text R@1/5/10" in text and "sound->text medr" in text
    assert "RANDOM" in text and "random weights" in text.lower()
    assert "tnn-ccca-clip-clap (it trains on class-labelled clips" in text  # skipped here, said why
    assert "evaluate-clip-clap" in text.split("skipped")[-1]
    runs = {p.name.rsplit("-", 1)[0]: p for p in (tmp_path / "cache" / "runs" / "shapes").iterdir()}
    m = json.loads((runs["clip-zero-shot"] / "metrics.json").read_text())
    assert {"image2text", "text2image"} <= set(m) and m["n_images"] == 2
    with np.load(runs["clip-zero-shot"] / "test_embeddings.npz") as z:
        assert z["image"].shape[0] == 2 and z["text"].shape[0] == 4  # one row per test picture, per caption
        assert np.allclose(np.linalg.norm(z["text"], axis=1), 1, atol=1e-5)
    m = json.loads((runs["clap-zero-shot"] / "metrics.json").read_text())
    assert set(m["matrix"]) == {"sound2text", "text2sound"}

    out = cli("run", "encoders", "--stage", "evaluate-clip-clap", "--dataset", "tiny", "--config", str(cfg), "--no-progress")
    table = out.stdout[out.stdout.index("MAP audio->visual  MAP visual->audio"):]
    assert "cca-clip-clap " in table and "tnn-ccca-clip-clap " in table  # one table of both, stage names whole
    run_dir = next((tmp_path / "cache" / "runs" / "tiny").glob("tnn-ccca-clip-clap-*"))
    import yaml

    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    assert "clap-audio" in json.dumps(params) and "clip-frames" in json.dumps(params)

    report = cli("report", "--config", str(cfg), "--out", str(tmp_path / "report.html"))
    page = (tmp_path / "report.html").read_text()
    assert report.returncode == 0 and "clip-zero-shot" in page and "clap-zero-shot" in page
    _queries_go_through_the_towers_stages(cfg, runs, shapes_root, tmp_path)


def _queries_go_through_the_towers_stages(cfg: Path, runs: dict, shapes_root: Path, tmp_path: Path) -> None:
    """`pipeline embed` and `pipeline serve` on the zero-shot runs: a typed caption through `clip-text`'s chain, a
    picture through `clip-frames`', a recording through `audio-48k` and `clap-audio`: the run's own stored rows."""
    from fastapi.testclient import TestClient

    from pipeline.config import load_config
    from pipeline.serve import create_app

    clips = [c for c in SHAPES_MANIFEST(shapes_root) if c.split == "test"]
    (tmp_path / "q" / "images").mkdir(parents=True)
    (tmp_path / "q" / "sounds").mkdir()
    (tmp_path / "q" / "texts.txt").write_text("\n".join(c.text[0] for c in clips) + "\n")
    for c in clips:
        shutil.copy(c.media["image"], tmp_path / "q" / "images" / f"{c.clip_id}.png")
        shutil.copy(c.media["audio"], tmp_path / "q" / "sounds" / f"{c.clip_id}.wav")
    for stage, args in (("clip-zero-shot", ["--texts", "texts.txt", "--images", "images"]),
                        ("clap-zero-shot", ["--texts", "texts.txt", "--sounds", "sounds"])):
        out = tmp_path / "q" / stage
        cli("embed", "--run", str(runs[stage]), *args, "--out", str(out), "--device", "cpu", cwd=tmp_path / "q")
        for modality in {"clip-zero-shot": ("text", "image"), "clap-zero-shot": ("text", "sound")}[stage]:
            new, own = open_store(out / modality), open_store(runs[stage] / "embeddings" / modality)
            for i, c in enumerate(clips):  # texts by line, files by name
                key = str(i + 1) if modality == "text" else f"{c.clip_id}.{'png' if modality == 'image' else 'wav'}"
                assert max_diff(new[key][0], own[c.clip_id][0]) < 1e-5, (stage, modality, c.clip_id)
    client = TestClient(create_app(load_config(cfg), run=runs["clip-zero-shot"]))
    page = client.get(f"/runs/shapes/{runs['clip-zero-shot'].name}/search",
                      params={"q": clips[0].text[0], "to": "image", "scope": "test", "k": 2})
    assert page.status_code == 200 and "The right one is at rank" in page.text


def test_the_encoders_run_only_where_a_stage_reads_them(tmp_path, tiny_synthetic_root):
    from pipeline.config import load_config
    from pipeline.plan import make_plan
    from pipeline.runner.stagekeys import make_adapter

    stages = {"audio": {"group": "extract", "implementation": "audio", "params": {"sample_rate": 16000}},
              **encoder_stages("random:0", "random:0")}
    cfg = load_config(write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                                   {"tiny": {"adapter": "synthetic", "root": str(tiny_synthetic_root), "params": TINY}},
                                   stages))
    plan = make_plan(cfg, make_adapter(cfg, "tiny"), "extract")
    assert plan.selected == []  # `pipeline run extract` computes no encoder, though a method here reads two
    assert plan.stages["clip-frames"].reason == "group 'extract-encoders' (`pipeline run extract-encoders`)"
    assert "no item of dataset 'tiny' has a caption" in plan.why_not["clip-text"]
    assert "does not apply" in plan.stages["clip-zero-shot"].reason
    plan = make_plan(cfg, make_adapter(cfg, "tiny"), "encoders", "tnn-ccca-clip-clap")
    assert plan.selected == ["audio-48k", "clip-frames", "clap-audio", "tnn-ccca-clip-clap"]


def test_a_caption_is_embedded_once_however_many_items_share_it(tmp_path, shapes_root):
    from pipeline.config import load_config
    from pipeline.runner.stagekeys import item_rows

    cfg = load_config(write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                                   {"shapes": {"adapter": "spoken_shapes", "root": str(shapes_root), "params": SHAPES}},
                                   encoder_stages("random:0", "random:0")))
    rows = item_rows(cfg, "shapes", "clip-text")
    clips = SHAPES_MANIFEST(shapes_root)
    by_text: dict[str, set] = {}
    for c in clips:
        by_text.setdefault(c.text[0], set()).add(rows[c.clip_id])
    assert all(len(keys) == 1 for keys in by_text.values())  # same sentence, same row
    assert len(set(rows.values())) == len(by_text)  # different sentences, different rows


def test_clap_windows_cover_a_long_clip_and_drop_a_short_tail():
    from extractors.clap import ClapAudio

    ex = ClapAudio(ClapAudio.Config(weights="random:0", window_s=1.0))
    rate = 48000
    lengths = {s: [len(w) / rate for w in ex.windows(np.zeros(int(s * rate), np.float32))] for s in (0.3, 2.4, 2.5, 3.0)}
    assert lengths == {0.3: [0.3], 2.4: [1.0, 1.0], 2.5: [1.0, 1.0, 0.5], 3.0: [1.0, 1.0, 1.0]}
    wave = np.arange(int(2.5 * rate), dtype=np.float32)
    assert np.array_equal(np.concatenate(ex.windows(wave)), wave)  # in order, nothing repeated or skipped


def test_clap_refuses_audio_at_another_rate(tmp_path, shapes_root):
    from pipeline.config import ConfigError

    stages = encoder_stages("random:0", "random:0")
    stages["audio-48k"]["params"]["sample_rate"] = 16000
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"shapes": {"adapter": "spoken_shapes", "root": str(shapes_root), "params": SHAPES}}, stages)
    with pytest.raises(ConfigError, match="48000 Hz.*16000 Hz"):
        run("extract-encoders", config=cfg, stage="clap-audio")


def _hub_cache(root: Path, repo: str, source: Path) -> Path:
    """`source` laid out as huggingface_hub keeps a downloaded repo: refs/main -> snapshots/<commit>/ -> blobs."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in source.iterdir():
        blob = folder / "blobs" / f"blob-{f.name}"
        blob.parent.mkdir(exist_ok=True)
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    return snap


def test_weights_are_found_locally_in_the_hub_cache_or_named_with_what_to_do(tmp_path, checkpoints, monkeypatch):
    from extractors.hf import resolve_checkpoint
    from extractors.weights import WeightsError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    by_path = resolve_checkpoint(str(checkpoints["clip"]), "clip")
    assert by_path.kind == "file" and by_path.paths["model"] == checkpoints["clip"]

    with pytest.raises(WeightsError) as e:  # offline, nowhere: the repo, the places looked in, what to run
        resolve_checkpoint("openai/clip-vit-base-patch32", "clip", download=False, dirs=[tmp_path / "w"])
    msg = str(e.value)
    assert "openai/clip-vit-base-patch32" in msg and str(tmp_path / "hub") in msg and "hf download" in msg
    assert str(tmp_path / "w" / "openai" / "clip-vit-base-patch32") in msg and "random:0" in msg
    with pytest.raises(WeightsError, match="could not be downloaded"):
        resolve_checkpoint("openai/clip-vit-base-patch32", "clip", download=True)

    snap = _hub_cache(tmp_path / "hub", "openai/clip-vit-base-patch32", checkpoints["clip"])
    cached = resolve_checkpoint("openai/clip-vit-base-patch32", "clip", download=False)
    assert cached.kind == "pretrained" and cached.paths["model"] == snap
    assert cached.digest == by_path.digest  # the same files, the same key, wherever they are

    shutil.copytree(checkpoints["clip"], tmp_path / "w" / "openai" / "clip-vit-base-patch32")
    local = resolve_checkpoint("openai/clip-vit-base-patch32", "clip", download=False, dirs=[tmp_path / "w"])
    assert local.paths["model"] == tmp_path / "w" / "openai" / "clip-vit-base-patch32"  # the dataset's directory first

    with pytest.raises(WeightsError, match="no config.json"):
        resolve_checkpoint(str(tmp_path / "w"), "clip")
    from extractors.clip import ClipText

    with pytest.raises(WeightsError, match="'clap' checkpoint, not a 'clip' one"):
        ClipText(ClipText.Config(weights=str(checkpoints["clap"]))).output_spec()


def test_bf16_runs_the_same_towers_close_to_fp32(checkpoints):
    from extractors.clip import ClipText

    texts = ["a red circle on a blue background", "two green squares"]
    fp32 = ClipText(ClipText.Config(weights=str(checkpoints["clip"]))).embed_texts(texts)
    bf16 = ClipText(ClipText.Config(weights=str(checkpoints["clip"]), precision="bf16")).embed_texts(texts)
    assert fp32.dtype == bf16.dtype == np.float32 and fp32.shape == bf16.shape == (2, 24)
    assert 0 < max_diff(fp32, bf16) < 0.1 * float(np.abs(fp32).max())  # bf16 ran (it differs), and is close


def test_clap_reads_its_checkpoints_rate_and_input_length(checkpoints):
    from extractors.clap import ClapAudio

    ex = ClapAudio(ClapAudio.Config(weights=str(checkpoints["clap"])))  # window_s null: the checkpoint's input
    assert ex.audio_input == (48000, 1.0) and ex.window() == 1.0  # transformers 5 writes processor_config.json
    assert ex.output_spec({"sample_rate": 48000}).frame_rate == 1.0


def test_a_fused_clap_gives_the_same_row_in_any_batch(tmp_path):
    """A fused checkpoint: transformers' feature extractor would send one window per batch down the fusion path at
    random; every window here is within the input, so none goes there and a row is the same in any batch."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    from extractors.clap import ClapAudio
    from pipeline.config import ExecutionParams

    torch.manual_seed(2)
    ClapModel(ClapConfig(
        text_config=dict(vocab_size=261, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=1,
                         projection_dim=8),
        audio_config=dict(depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], patch_embeds_hidden_size=8,
                          hidden_size=64, projection_dim=8, enable_fusion=True),
        projection_dim=8)).save_pretrained(tmp_path / "fused")
    ClapProcessor(ClapFeatureExtractor(truncation="fusion", max_length_s=1),
                  RobertaTokenizer(vocab=_byte_vocab(False), merges=[])).save_pretrained(tmp_path / "fused")
    waves = [np.random.default_rng(i).standard_normal(48000).astype(np.float32) * 0.1 for i in range(3)]
    rows = []
    for batch in (1, 3, 3):
        ex = ClapAudio(ClapAudio.Config(weights=str(tmp_path / "fused")), ExecutionParams(device="cpu", batch_size=batch))
        rows.append(np.concatenate(ex.compute(waves, {"sample_rate": 48000})))
    assert rows[0].shape == (3, 8)
    assert max_diff(rows[0], rows[1]) < 1e-5 and max_diff(rows[1], rows[2]) < 1e-5


def test_a_checkpoints_key_is_its_numbers_files_and_an_incomplete_one_is_named(tmp_path, checkpoints, monkeypatch):
    from extractors.hf import resolve_checkpoint
    from extractors.weights import WeightsError

    ckpt = shutil.copytree(checkpoints["clip"], tmp_path / "clip")
    digest = resolve_checkpoint(str(ckpt), "clip").digest
    (ckpt / ".cache" / "huggingface").mkdir(parents=True)
    (ckpt / ".cache" / "huggingface" / "model.safetensors.metadata").write_text("downloaded at 1796675030.1")
    (ckpt / "tf_model.h5").write_bytes(b"another framework's weights")
    (ckpt / "README.md").write_text("# a model card")
    assert resolve_checkpoint(str(ckpt), "clip").digest == digest  # none of these makes a number
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert resolve_checkpoint(str(ckpt), "clip").digest != digest  # one bit of the weights does

    (ckpt / "processor_config.json").unlink()
    with pytest.raises(WeightsError, match="lacks a processor config"):
        resolve_checkpoint(str(ckpt), "clip")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.json", "model.safetensors"):  # what a model-only from_pretrained leaves in the cache
        shutil.copy(checkpoints["clip"] / name, partial / name)
    _hub_cache(tmp_path / "hub", "openai/clip-vit-base-patch32", partial)
    with pytest.raises(WeightsError, match="is incomplete .no a processor config, no tokenizer files. in"):
        resolve_checkpoint("openai/clip-vit-base-patch32", "clip", download=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(WeightsError, match="does not exist"):  # a mistyped local path is never taken for a hub id
        resolve_checkpoint("models/clip-b32", "clip", download=True)


def test_a_clip_without_frames_keeps_no_pooled_row(checkpoints):
    from extractors.clip import ClipImage

    ex = ClipImage(ClipImage.Config(weights=str(checkpoints["clip"]), pool="max"))
    frame = np.zeros((3, 48, 48), np.uint8)
    empty, one = ex.compute([[], [frame]])
    assert empty.shape == (0, 24) and one.shape == (1, 24) and np.isfinite(one).all()
