"""Each corpus adapter on a miniature copy of its published layout: manifests, and broken layouts."""
import json
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets import DatasetError
from pipeline.datasets.ave import AveConfig, AveDataset
from pipeline.datasets.cub import CubConfig, CubDataset
from pipeline.datasets.flickr8k_audio import Flickr8kAudioConfig, Flickr8kAudioDataset
from pipeline.datasets.places_audio import PlacesAudioConfig, PlacesAudioDataset
from pipeline.datasets.speech_coco import SpeechCocoConfig, SpeechCocoDataset, word_times
from pipeline.datasets.vegas import VEGAS_CLASSES, VegasConfig, VegasDataset


def wav(path: Path, seconds: float = 0.2, freq: float = 440.0) -> Path:
    """A real 16 kHz mono PCM wav."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((np.sin(2 * np.pi * freq * t) * 8000).astype("<i2").tobytes())
    return path


def jpg(path: Path, hue: int = 0) -> Path:
    """A real 16x16 jpeg."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (hue % 256, 80, 160)).save(path)
    return path


# VEGAS

def test_vegas_matches_class_folders_and_balances_folds(tmp_path):
    names = ["Baby_cry", "chainsaw", "Dog", "drum", "fireworks", "helicopter", "printer", "Rail_transport",
             "snoring", "water_flowing"]
    for name in names:
        for i in range(5):
            (tmp_path / name / "videos").mkdir(parents=True, exist_ok=True)
            (tmp_path / name / "videos" / f"video_{i:05d}.mp4").write_bytes(b"")  # manifest only: never decoded
    m = VegasDataset("vegas", tmp_path, VegasConfig(seed=1)).manifest()
    assert m.classes == VEGAS_CLASSES and len(m) == 50
    assert m.by_id()["Baby_cry/videos/video_00003"].label == "baby crying"
    for cls in VEGAS_CLASSES:
        assert sorted(c.fold for c in m.clips if c.label == cls) == [0, 1, 2, 3, 4]
    assert [c.fold for c in m.clips] == [c.fold for c in VegasDataset("v", tmp_path, VegasConfig(seed=1)).manifest().clips]
    assert [c.fold for c in m.clips] != [c.fold for c in VegasDataset("v", tmp_path, VegasConfig(seed=2)).manifest().clips]
    sub = VegasDataset("v", tmp_path, VegasConfig(classes=["dog", "drum"])).manifest
    with pytest.raises(DatasetError, match="not VEGAS classes selected by `classes`"):
        sub()
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "a.mp4").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"folder\(s\) \['cats'\] are not VEGAS classes"):
        VegasDataset("v", tmp_path, VegasConfig()).manifest()


def test_vegas_incomplete_layout(tmp_path):
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "a.mp4").write_bytes(b"")
    with pytest.raises(DatasetError, match="no folder for class.*'baby crying'.*list it in the `classes` param"):
        VegasDataset("v", tmp_path, VegasConfig()).manifest()
    assert len(VegasDataset("v", tmp_path, VegasConfig(classes=["dog"])).manifest()) == 1


# AVE

def make_ave(root: Path) -> None:
    rows = ["Church bell&RUhOCu3LNXM&good&0&10", "Bark&dog00000001&good&2&7", "Bark&dog00000001&good&8&10",
            "Male speech, man speaking&spk0000000&good&1&4", "Church bell&zero000000&good&0&0"]
    (root / "AVE").mkdir(parents=True)
    (root / "Annotations.txt").write_text("\ufeffCategory&VideoID&Quality&StartTime&EndTime\n" + "\n".join(rows) + "\n")
    (root / "trainSet.txt").write_text("\n".join(rows[:2]) + "\n")
    (root / "valSet.txt").write_text(rows[2] + "\n")
    (root / "testSet.txt").write_text(rows[3] + "\n")
    for vid in {r.split("&")[1] for r in rows}:
        (root / "AVE" / f"{vid}.mp4").write_bytes(b"")


def test_ave_segments_splits_and_classes(tmp_path):
    make_ave(tmp_path)
    m = AveDataset("ave", tmp_path, AveConfig(n_folds=2)).manifest()
    assert [c.clip_id for c in m.clips] == ["RUhOCu3LNXM", "dog00000001", "dog00000001#2", "spk0000000"]
    assert m.classes == ["Church bell", "Male speech, man speaking", "Bark"]  # the corpus's class order
    seg = m.by_id()["dog00000001#2"]
    assert (seg.start, seg.end, seg.label, seg.split) == (8.0, 10.0, "Bark", "val")
    assert [c.split for c in m.clips] == ["train", "train", "val", "test"]
    assert m.by_id()["spk0000000"].media["video"] == (tmp_path / "AVE" / "spk0000000.mp4").absolute()


def test_ave_broken_layouts(tmp_path):
    make_ave(tmp_path)
    (tmp_path / "AVE" / "spk0000000.mp4").unlink()
    with pytest.raises(DatasetError, match="1 media file.*missing:\n  .*AVE/spk0000000.mp4"):
        AveDataset("ave", tmp_path, AveConfig()).manifest()
    (tmp_path / "testSet.txt").unlink()
    with pytest.raises(DatasetError, match="missing test split file .*testSet.txt; expected layout"):
        AveDataset("ave", tmp_path, AveConfig()).manifest()
    (tmp_path / "Annotations.txt").write_text("Bark&only-three&good\n")
    with pytest.raises(DatasetError, match="Annotations.txt line 1 is not Category&VideoID"):
        AveDataset("ave", tmp_path, AveConfig()).manifest()
    (tmp_path / "testSet.txt").write_text("")
    (tmp_path / "Annotations.txt").write_text("Bark&../../outside&good&0&3\n")
    with pytest.raises(DatasetError, match="escapes the dataset root"):
        AveDataset("ave", tmp_path, AveConfig()).manifest()
    (tmp_path / "Annotations.txt").unlink()
    with pytest.raises(DatasetError, match="missing annotation file .*Annotations.txt"):
        AveDataset("ave", tmp_path, AveConfig()).manifest()


# Flickr8k audio

def make_flickr8k_audio(root: Path, karpathy: bool = True) -> list[str]:
    images = ["1000268201_693b08cb0e", "1001773457_577c3a7d70", "1002674143_1b742ab4b8"]
    tokens = []
    for n, stem in enumerate(images):
        jpg(root / "Flicker8k_Dataset" / f"{stem}.jpg", n * 60)
        for k in range(5):
            wav(root / "flickr_audio" / "wavs" / f"{stem}_{k}.wav", freq=300 + 50 * k)
            tokens.append(f"{stem}.jpg#{k}\tcaption {k} of image {n} .")
    tokens.append(f"{images[0]}.jpg.1#0\tstray duplicate")
    (root / "Flickr8k_text").mkdir()
    (root / "Flickr8k_text" / "Flickr8k.token.txt").write_text("\n".join(tokens) + "\n")
    (root / "flickr_audio" / "wav2capt.txt").write_text(
        "".join(f"{s}_{k}.wav {s}.jpg #{k}\n" for s in images for k in range(5)))
    if karpathy:
        doc = {"dataset": "flickr8k", "images": [
            {"filename": f"{s}.jpg", "imgid": i, "split": ["train", "val", "test"][i],
             "sentences": [{"raw": f"karpathy {k}", "tokens": ["karpathy", str(k)], "imgid": i, "sentid": 5 * i + k}
                           for k in range(5)]} for i, s in enumerate(images)]}
        (root / "dataset_flickr8k.json").write_text(json.dumps(doc))
    return images


def test_flickr8k_audio_manifest(tmp_path):
    images = make_flickr8k_audio(tmp_path)
    m = Flickr8kAudioDataset("f8k", tmp_path, Flickr8kAudioConfig()).manifest()
    assert len(m) == 15
    c = m.by_id()[f"{images[1]}_3"]
    assert c.group == images[1] and c.split == "val" and c.text == ("caption 3 of image 1 .",)
    assert c.media["image"].name == f"{images[1]}.jpg" and c.media["audio"].name == f"{images[1]}_3.wav"
    assert {x.group for x in m.clips if x.split == "test"} == {images[2]}


def test_flickr8k_audio_without_karpathy_or_wav2capt(tmp_path):
    images = make_flickr8k_audio(tmp_path, karpathy=False)
    (tmp_path / "flickr_audio" / "wav2capt.txt").unlink()
    (tmp_path / "Flickr8k_text" / "Flickr_8k.testImages.txt").write_text(f"{images[0]}.jpg\n")
    m = Flickr8kAudioDataset("f8k", tmp_path, Flickr8kAudioConfig()).manifest()
    assert len(m) == 15 and m.by_id()[f"{images[0]}_4"].split == "test" and m.by_id()[f"{images[1]}_0"].split is None
    assert m.by_id()[f"{images[0]}_4"].text == ("caption 4 of image 0 .",)


def test_flickr8k_audio_broken_layouts(tmp_path):
    images = make_flickr8k_audio(tmp_path)
    (tmp_path / "dataset_flickr8k.json").write_text('{"images": [')
    with pytest.raises(DatasetError, match="malformed json in .*dataset_flickr8k.json at line 1"):
        Flickr8kAudioDataset("f8k", tmp_path, Flickr8kAudioConfig()).manifest()
    (tmp_path / "dataset_flickr8k.json").unlink()
    (tmp_path / "Flicker8k_Dataset" / f"{images[2]}.jpg").unlink()
    with pytest.raises(DatasetError, match=f"5 media file.*missing:\n  .*{images[2]}.jpg"):
        Flickr8kAudioDataset("f8k", tmp_path, Flickr8kAudioConfig()).manifest()
    assert len(Flickr8kAudioDataset("f8k", tmp_path, Flickr8kAudioConfig(skip_missing=True)).manifest()) == 10
    with open(tmp_path / "flickr_audio" / "wav2capt.txt", "a") as f:
        f.write("x_0.wav ../../../etc/passwd #0\n")
    with pytest.raises(DatasetError, match="spoken caption 'x_0.wav'.*escapes the dataset root"):
        Flickr8kAudioDataset("f8k", tmp_path, Flickr8kAudioConfig(skip_missing=True)).manifest()


# Places audio

def make_places(root: Path) -> None:
    jpg(root / "images" / "a" / "abbey" / "gsun_0001.jpg")
    jpg(root / "images" / "b" / "beach" / "gsun_0002.jpg", 90)
    for split, entries in {"train": [("A1", "a/abbey/gsun_0001.jpg"), ("A2", "b/beach/gsun_0002.jpg")],
                           "val": [("B1", "b/beach/gsun_0002.jpg")]}.items():
        data = []
        for utt, image in entries:
            wav(root / "wavs" / "1" / f"utt_{utt}.wav")
            data.append({"uttid": utt, "speaker": "S1", "wav": f"wavs/1/utt_{utt}.wav", "image": image,
                         "asr_text": f"a picture {utt}"})
        (root / "metadata").mkdir(exist_ok=True)
        (root / "metadata" / f"{split}.json").write_text(json.dumps(
            {"image_base_path": "/placeholder/images256", "audio_base_path": "/placeholder", "data": data}))


def test_places_audio_manifest(tmp_path):
    make_places(tmp_path)
    m = PlacesAudioDataset("places", tmp_path, PlacesAudioConfig()).manifest()
    assert [(c.clip_id, c.split) for c in m.clips] == [("A1", "train"), ("A2", "train"), ("B1", "val")]
    b = m.by_id()["B1"]
    # the beach picture has utterances in train and in val: one group per split (no group spans two splits)
    assert b.text == ("a picture B1",) and b.group == "val/b/beach/gsun_0002.jpg"
    assert m.by_id()["A2"].group == "train/b/beach/gsun_0002.jpg" and m.by_id()["A1"].group == "a/abbey/gsun_0001.jpg"
    assert b.media["image"] == tmp_path / "images" / "b" / "beach" / "gsun_0002.jpg"
    other = tmp_path / "elsewhere"
    (tmp_path / "images").rename(other)
    with pytest.raises(DatasetError, match="missing Places205 images .*set the `image_root` param"):
        PlacesAudioDataset("places", tmp_path, PlacesAudioConfig()).manifest()
    assert len(PlacesAudioDataset("p", tmp_path, PlacesAudioConfig(image_root=str(other))).manifest()) == 3


def test_places_audio_broken_layouts(tmp_path):
    make_places(tmp_path)
    doc = json.loads((tmp_path / "metadata" / "val.json").read_text())
    doc["data"][0]["wav"] = "../secret.wav"
    (tmp_path / "metadata" / "val.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="val.json data\\[0\\]: path '../secret.wav' escapes the dataset root"):
        PlacesAudioDataset("p", tmp_path, PlacesAudioConfig()).manifest()
    doc["data"][0] = {"image": "x.jpg"}
    (tmp_path / "metadata" / "val.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="data\\[0\\] lacks 'wav' or 'image'"):
        PlacesAudioDataset("p", tmp_path, PlacesAudioConfig()).manifest()
    (tmp_path / "metadata" / "val.json").write_text("{'single': 'quotes'}")
    with pytest.raises(DatasetError, match="malformed json in .*val.json"):
        PlacesAudioDataset("p", tmp_path, PlacesAudioConfig()).manifest()
    (tmp_path / "metadata" / "val.json").unlink()
    with pytest.raises(DatasetError, match="missing val metadata file .*metadata/val.json"):
        PlacesAudioDataset("p", tmp_path, PlacesAudioConfig()).manifest()
    (tmp_path / "wavs" / "1" / "utt_A2.wav").unlink()
    with pytest.raises(DatasetError, match="1 media file.*missing:\n  .*utt_A2.wav"):
        PlacesAudioDataset("p", tmp_path, PlacesAudioConfig(splits=["train"])).manifest()


# CUB

def make_cub(root: Path, reed_split: bool = False) -> None:
    cub, text = root / "CUB_200_2011", root / "cvpr2016_cub"
    classes = {1: "001.Black_footed_Albatross", 101: "101.White_Pelican", 151: "151.Black_capped_Vireo"}
    images, labels = [], []
    for n, (k, cls) in enumerate(sorted(classes.items())):
        for j in range(2):
            rel = f"{cls}/{cls.split('.')[1]}_{j:04d}.jpg"
            jpg(cub / "images" / rel, 40 * n + j)
            (text / "text_c10" / cls).mkdir(parents=True, exist_ok=True)
            (text / "text_c10" / rel).with_suffix(".txt").write_text("".join(f"bird {k} {j} caption {c}\n" for c in range(10)))
            images.append(f"{len(images) + 1} {rel}")
            labels.append(f"{len(labels) + 1} {k}")
    (cub / "images.txt").write_text("\n".join(images) + "\n")
    (cub / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (cub / "classes.txt").write_text("".join(f"{k} {c}\n" for k, c in classes.items()))
    if reed_split:  # Reed's names may differ from CUB's: matched by number
        (text / "trainclasses.txt").write_text("151.Black_Capped_Vireo\n")
        (text / "valclasses.txt").write_text("001.Black_footed_Albatross\n")
        (text / "testclasses.txt").write_text("101.White_Pelican\n")


def test_cub_manifest_and_class_split(tmp_path):
    make_cub(tmp_path)
    m = CubDataset("cub", tmp_path, CubConfig()).manifest()
    assert len(m) == 6 and m.classes == ["001.Black_footed_Albatross", "101.White_Pelican", "151.Black_capped_Vireo"]
    c = m.by_id()["101.White_Pelican/White_Pelican_0001"]
    assert c.label == "101.White_Pelican" and c.split == "val" and len(c.text) == 10 and c.text[3] == "bird 101 1 caption 3"
    assert [x.split for x in m.clips] == ["train"] * 2 + ["val"] * 2 + ["test"] * 2
    make_cub(tmp_path / "reed", reed_split=True)
    m = CubDataset("cub", tmp_path / "reed", CubConfig()).manifest()
    assert [x.split for x in m.clips] == ["val"] * 2 + ["test"] * 2 + ["train"] * 2
    # per_caption: an item per caption (the caption trainers' pairs), grouped by its image, sharing its picture
    per = CubDataset("cub", tmp_path, CubConfig(per_caption=True)).manifest()
    assert len(per) == 60 and len({x.group for x in per.clips}) == 6
    x = per.by_id()["101.White_Pelican/White_Pelican_0001/3"]
    assert x.text == ("bird 101 1 caption 3",) and x.group == "101.White_Pelican/White_Pelican_0001"
    assert x.media == c.media and x.split == "val" and x.label == c.label


def test_cub_broken_layouts(tmp_path):
    make_cub(tmp_path)
    (tmp_path / "cvpr2016_cub" / "text_c10" / "101.White_Pelican" / "White_Pelican_0000.txt").unlink()
    with pytest.raises(DatasetError, match="1 caption file.*missing, e.g. .*White_Pelican_0000.txt"):
        CubDataset("cub", tmp_path, CubConfig()).manifest()
    assert len(CubDataset("cub", tmp_path, CubConfig(skip_missing=True)).manifest()) == 5
    (tmp_path / "cvpr2016_cub" / "text_c10" / "101.White_Pelican" / "White_Pelican_0000.txt").write_text("a\n")
    (tmp_path / "CUB_200_2011" / "images" / "001.Black_footed_Albatross" / "Black_footed_Albatross_0001.jpg").unlink()
    with pytest.raises(DatasetError, match="(?s)1 media file.*Black_footed_Albatross_0001.jpg"):
        CubDataset("cub", tmp_path, CubConfig()).manifest()
    (tmp_path / "CUB_200_2011" / "classes.txt").unlink()
    with pytest.raises(DatasetError, match="missing class list file .*classes.txt"):
        CubDataset("cub", tmp_path, CubConfig()).manifest()


# SPEECH-COCO

def make_speech_coco(root: Path, nested_val: bool = True) -> None:
    for split, img, cap in (("train2014", 298817, 26763), ("train2014", 298817, 26764), ("val2014", 108505, 147972)):
        base = root / split / split if split == "val2014" and nested_val else root / split
        name = f"{img}_{cap}_Phil_None_0-9"
        wav(base / "wav" / f"{name}.wav", 1.2)
        jpg(root / "images" / split / f"COCO_{split}_{img:012d}.jpg")
        doc = {"duration": 1.2, "speaker": "Phil", "synthesisedCaption": "a white cat", "imgID": img,
               "captionID": cap, "wavFilename": f"{name}.wav", "speed": 0.9, "disfluency": ["None", ""],
               "timecode": [[120.0, "WORD", "a"], [120.0, "SYL", "a"], [250.5, "WORD", "white"],
                            [250.5, "PHO", "w"], [700.0, "SEPR", " "], [760.0, "WORD", "cat"]]}
        (base / "json").mkdir(parents=True, exist_ok=True)
        (base / "json" / f"{name}.json").write_text(json.dumps(doc))


def test_word_times_from_timecode():
    tc = [[0.0, "SYL", "x"], [100.0, "WORD", "hi"], [300.0, "SEPR", " "], [400.0, "WORD", "there"]]
    assert word_times(tc, 0.9) == (("hi", 0.1, 0.3), ("there", 0.4, 0.9))


def test_speech_coco_manifest(tmp_path):
    make_speech_coco(tmp_path)
    m = SpeechCocoDataset("sc", tmp_path, SpeechCocoConfig()).manifest()
    assert [c.clip_id for c in m.clips] == ["train2014/298817_26763_Phil_None_0-9", "train2014/298817_26764_Phil_None_0-9",
                                           "val2014/108505_147972_Phil_None_0-9"]
    c = m.clips[2]
    assert c.split == "val" and c.group == "108505" and c.text == ("a white cat",)
    assert c.words == (("a", 0.12, 0.2505), ("white", 0.2505, 0.7), ("cat", 0.76, 1.2))
    assert c.media["image"].name == "COCO_val2014_000000108505.jpg"


def test_speech_coco_broken_layouts(tmp_path):
    make_speech_coco(tmp_path)
    bad = tmp_path / "train2014" / "json" / "298817_26763_Phil_None_0-9.json"
    bad.write_text(json.dumps({"imgID": 298817}))
    with pytest.raises(DatasetError, match="298817_26763_Phil_None_0-9.json: expected imgID, synthesisedCaption"):
        SpeechCocoDataset("sc", tmp_path, SpeechCocoConfig()).manifest()
    bad.write_text("{")
    with pytest.raises(DatasetError, match="malformed json"):
        SpeechCocoDataset("sc", tmp_path, SpeechCocoConfig()).manifest()
    bad.unlink()
    (tmp_path / "images" / "val2014" / "COCO_val2014_000000108505.jpg").unlink()
    with pytest.raises(DatasetError, match="(?s)1 media file.*COCO_val2014_000000108505.jpg"):
        SpeechCocoDataset("sc", tmp_path, SpeechCocoConfig()).manifest()
    with pytest.raises(DatasetError, match="missing folder .*test2014/json"):
        SpeechCocoDataset("sc", tmp_path, SpeechCocoConfig(splits=["test2014"])).manifest()


def test_ave_clips_are_cut_to_their_segment_end_to_end(tmp_path, clip_factory):
    from pipeline import open_store, run

    from ..conftest import write_config

    root = tmp_path / "AVE_Dataset"
    clip_factory(root / "AVE" / "vidA.mp4", seconds=3.0)
    clip_factory(root / "AVE" / "vidB.mp4", seconds=3.0, freq=880)
    rows = "Bark&vidA&good&1&2\nBark&vidA&good&2&3\nBus&vidB&good&0&3\n"
    for name in ("Annotations.txt", "trainSet.txt"):
        (root / name).write_text(rows)
    (root / "valSet.txt").write_text("")
    (root / "testSet.txt").write_text("")
    cfg = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                       {"ave": {"adapter": "ave", "root": str(root), "params": {"n_folds": 2}}})
    (report,) = run("extract", config=cfg, stage="audio")
    assert report.computed == 3 and report.failed == 0
    store = open_store(dataset="ave", stage="audio", config=cfg)
    assert [len(store[c]) for c in ("vidA", "vidA#2", "vidB")] == [16000, 16000, 48000]


def test_datasets_command_lists_every_adapter_with_its_layout():
    from pipeline.registry import DATASETS

    from ..conftest import cli

    out = cli("datasets").stdout
    for name in DATASETS.names():
        assert f"\n{name}: " in f"\n{out}"
    assert "ROOT/metadata/train.json" in out and "published: Tian et al., ECCV 2018" in out
    assert "tnn_h5: " in out and "[pre-extracted features: run the `import` group]" in out


def test_a_symlinked_folder_inside_the_root_is_allowed(tmp_path):
    make_places(tmp_path / "src")
    root = tmp_path / "root"
    root.mkdir()
    for name in ("metadata", "wavs", "images"):  # e.g. images256 on another disk
        (root / name).symlink_to(tmp_path / "src" / name)
    m = PlacesAudioDataset("p", root, PlacesAudioConfig()).manifest()
    assert len(m) == 3 and m.clips[0].media["audio"] == root / "wavs" / "1" / "utt_A1.wav"


def test_malformed_metadata_values_get_dataset_errors(tmp_path):
    make_places(tmp_path / "p")
    doc = json.loads((tmp_path / "p" / "metadata" / "val.json").read_text())
    doc["data"][0]["asr_text"] = 123
    (tmp_path / "p" / "metadata" / "val.json").write_text("\ufeff" + json.dumps(doc))  # a BOM is fine
    with pytest.raises(DatasetError, match="data\\[0\\].asr_text must be a string, got 123"):
        PlacesAudioDataset("p", tmp_path / "p", PlacesAudioConfig()).manifest()
    make_flickr8k_audio(tmp_path / "f")
    (tmp_path / "f" / "dataset_flickr8k.json").write_text(json.dumps({"images": [{"filename": "a.jpg", "sentences": []}]}))
    with pytest.raises(DatasetError, match="images\\[0\\] is not \\{filename, split, sentences"):
        Flickr8kAudioDataset("f", tmp_path / "f", Flickr8kAudioConfig()).manifest()
    make_ave(tmp_path / "a")
    (tmp_path / "a" / "Annotations.txt").write_text("Bark&v1&good&nan&5\n")
    with pytest.raises(DatasetError, match="line 1 is not .*0 <= start <= end"):
        AveDataset("a", tmp_path / "a", AveConfig()).manifest()
