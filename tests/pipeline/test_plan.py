"""The plan: a dataset computes only what the methods that apply to it read; a stage left out is never resolved
(its weights never looked up); a dataset binds every network to random weights in one line; the front door
(`pipeline run extract --dataset synthetic`, `status`, `--dry-run`) works with no weights anywhere."""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from pipeline.cache import hash_key
from pipeline.config import DatasetSpec, load_config
from pipeline.context import PipelineError
from pipeline.datasets import Clip, Manifest
from pipeline.datasets.base import GeneratedDataset
from pipeline.plan import make_plan
from pipeline.registry import DATASETS
from pipeline.runner import make_adapter, resolve
from tests.conftest import cli

REPO = Path(__file__).resolve().parents[2]
CCA_FAMILY = ["audio", "vggish", "inception_v3"]
ENCODERS_ON_VIDEO = ["audio-48k", "clip-frames", "clap-audio", "cca-clip-clap", "cluster-cca-clip-clap", "tnn-ccca-clip-clap",
                     "evaluate-clip-clap"]  # a method that applies: listed


def _repo_config(tmp_path: Path, extra_stages: dict | None = None, **datasets: dict) -> Path:
    """The repository's stages.yaml with its cache under tmp_path, small generated datasets rooted there, and
    `extra_stages` added."""
    doc = yaml.safe_load((REPO / "stages.yaml").read_text())
    doc["cache"] = str(tmp_path / "cache")
    doc["execution"]["progress"] = False
    for name, changes in datasets.items():
        spec = copy.deepcopy(doc["datasets"][name])
        spec["root"] = str(tmp_path / "data" / name)
        spec["params"] = {**spec.get("params", {}), **changes.pop("params", {})}
        spec.update(changes)
        doc["datasets"][name] = spec
    doc["stages"].update(extra_stages or {})
    path = tmp_path / "stages.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _no_weights() -> dict[str, str]:
    """The environment of a machine with no pretrained weights anywhere (an empty TORCH_HOME and Hugging Face cache,
    the hub out of reach)."""
    return {**os.environ, "TORCH_HOME": "/nonexistent/torch-home", "HF_HUB_CACHE": "/nonexistent/hf-hub",
            "HF_HUB_OFFLINE": "1"}


def _plan(tmp_path: Path, clips: list[Clip], group: str | None, stage: str | None = None, **spec_fields):
    cfg = load_config(REPO / "stages.yaml", cache=str(tmp_path / "cache"))
    cfg.datasets["probe"] = DatasetSpec("probe", "folder", tmp_path, {}, **spec_fields)
    manifest = Manifest("probe", tmp_path, clips, sorted({c.label for c in clips if c.label}) or None)
    return cfg, make_plan(cfg, make_adapter(cfg, "probe"), group, stage, manifest=manifest)


def _videos(n: int = 6) -> list[Clip]:
    return [Clip(f"c{i}", {"video": Path(f"c{i}.mp4")}, label=f"class{i % 2}", fold=i % 3) for i in range(n)]


def _spoken_captions(n: int = 6) -> list[Clip]:
    return [Clip(f"cap{i}", {"audio": Path(f"cap{i}.wav"), "image": Path(f"img{i // 2}.png")}, group=f"img{i // 2}",
                 split=["train", "val", "test"][i % 3], text=(f"a red circle {i}",)) for i in range(n)]


# -- the plan ------------------------------------------------------------------------------------------------

def test_class_labelled_video_extracts_only_what_the_cca_family_reads(tmp_path):
    cfg, plan = _plan(tmp_path, _videos(), "extract")
    assert plan.selected == CCA_FAMILY
    assert plan.stages["vggish"].reason == "read by cca, cluster-cca, tnn-ccca"
    assert plan.stages["audio"].reason == "read by vggish"
    for left in ("vgg16", "vgg16-maps", "vgg16-logits", "logmel", "logmel-davenet", "spectrogram", "resnet152-416"):
        assert not plan.stages[left].runs and "no method that applies" in plan.stages[left].reason, left
    assert "does not apply" in plan.stages["vase-2s"].reason and "does not apply" in plan.stages["dsve-pointing"].reason
    evaluate = make_plan(cfg, make_adapter(cfg, "probe"), "evaluate", manifest=plan.manifest)
    assert evaluate.selected == CCA_FAMILY + ["cca", "cluster-cca", "tnn-ccca", "evaluate"]


def test_spoken_captions_extract_what_vase_vgs_and_see_hear_read_read(tmp_path):
    cfg, plan = _plan(tmp_path, _spoken_captions(), "extract")
    assert plan.selected == ["audio", "logmel-davenet", "vgg16", "logmel-vgs", "vgg16-maps", "vgg16-logits",
                             "spectrogram"]
    assert plan.stages["vgg16"].reason == "read by vase-2s, vase-3s, vase-3s-finetune, see-hear-read"
    assert "no method that applies" in plan.stages["vggish"].reason  # nothing class-labelled here
    train = make_plan(cfg, make_adapter(cfg, "probe"), "train", manifest=plan.manifest)
    assert {"vase-2s", "vase-3s-finetune", "vgs", "vgs-cnn0", "see-hear-read"} <= set(train.selected)
    assert train.reads["vgs"] == ["logmel-vgs", "vgg16-maps"]  # VGS binds its views: no "no visual upstream"


def test_pictures_without_sound_leave_every_audio_stage_out(tmp_path):
    clips = [Clip(f"c{i}", {"image": Path(f"img{i // 3}.png")}, group=f"img{i // 3}", text=("a blue square",),
                  split=["train", "val", "test"][i % 3]) for i in range(9)]
    _, plan = _plan(tmp_path, clips, "train")
    assert plan.selected == ["resnet152-256", "dsve"]  # CLIP's zero-shot applies too, in its own group `encoders`
    assert plan.stages["audio"].reason.endswith("no item of dataset 'probe' has any")
    assert "does not apply" in plan.stages["vase-2s"].reason


def test_an_evaluate_stage_with_another_datasets_model_reads_only_its_own_views(tmp_path):
    (tmp_path / "coco").mkdir()
    clips = [Clip(f"r{i}", {"image": Path(f"img{i // 2}.png")}, group=f"img{i // 2}", text=("a red circle",),
                  split="test", box=(1.0, 2.0, 10.0, 10.0), image_size=(64, 64)) for i in range(6)]
    cfg = load_config(REPO / "stages.yaml", cache=str(tmp_path / "cache"))
    cfg.datasets["coco"].root = tmp_path / "coco"
    cfg.datasets["probe"] = DatasetSpec("probe", "folder", tmp_path, {}, weights="random:0")
    manifest = Manifest("probe", tmp_path, clips, None)
    plan = make_plan(cfg, make_adapter(cfg, "probe"), "evaluate", manifest=manifest)
    assert "dsve-pointing" in plan.selected and plan.foreign == {"dsve-pointing": "coco"}
    assert plan.reads["dsve-pointing"] == ["resnet152-416"]
    assert "resnet152-256" not in plan.selected  # dsve's own input belongs to the dataset it trains on
    assert plan.stages["dsve"].reason == "'dsve-pointing' applies its model trained on dataset 'coco'"
    with pytest.raises(PipelineError, match="stage 'vgs' does not apply to dataset 'probe'"):
        make_plan(cfg, make_adapter(cfg, "probe"), stage="vgs", manifest=manifest)
    cfg.stages["dsve-pointing"].params["model_dataset"] = "cocoa"  # a typo: said, not a KeyError
    assert "no dataset of stages.yaml" in make_plan(cfg, make_adapter(cfg, "probe"), manifest=manifest).why_not[
        "dsve-pointing"]
    cfg.stages["dsve-pointing"].params["model_dataset"] = "coco"
    cfg.datasets["coco"].root = tmp_path / "nowhere"  # the model's dataset is not here: the stage says so
    with pytest.raises(PipelineError, match="no stage of group 'evaluate' applies to dataset 'probe': .*"
                                            "dsve-pointing: it applies the models trained on dataset 'coco', whose root"):
        make_plan(cfg, make_adapter(cfg, "probe"), "evaluate", manifest=manifest)


def test_a_dataset_lists_feature_stages_no_method_reads(tmp_path):
    _, plan = _plan(tmp_path, _videos(), "extract", extract=["vgg16-maps"])
    assert plan.selected == ["audio", "vggish", "inception_v3", "vgg16-maps"]
    assert plan.stages["vgg16-maps"].reason == "listed under dataset 'probe': extract"


# -- weights bound per dataset ---------------------------------------------------------------------------------

def test_a_new_cnn_stage_cannot_break_a_generated_dataset(tmp_path):
    """Every generated dataset binds its networks in one line: a CNN stage added later resolves there with
    random weights, offline, without naming it under any dataset."""
    path = _repo_config(tmp_path, {"vgg16-fc6": {"group": "extract", "implementation": "vgg16",
                                                 "params": {"weights": "imagenet", "layer": "logits", "fps": 2.0}}})
    cfg = load_config(path)
    generated = [d for d, spec in cfg.datasets.items() if issubclass(DATASETS.get(spec.adapter), GeneratedDataset)]
    assert {"synthetic", "synthetic-hard", "spoken-shapes", "spoken-scenes", "scenes-captions", "scenes-vg"} <= set(generated)
    os.environ["TORCH_HOME"], old = str(tmp_path / "no-weights"), os.environ.get("TORCH_HOME")
    try:
        for d in generated:
            assert cfg.params_for("vgg16-fc6", d)["weights"] == "random:0", d
            ctx = resolve(cfg, d, need_manifest=False, only=["vgg16-fc6"], exact=True)
            assert ctx.stages["vgg16-fc6"].attrs["random_weights"] is True
    finally:
        os.environ.pop("TORCH_HOME") if old is None else os.environ.__setitem__("TORCH_HOME", old)
    assert cfg.params_for("vgg16-fc6", "vegas")["weights"] == "imagenet"  # a real corpus keeps pretrained weights


# computed on the commit before dataset-wide `weights:` (its per-stage `set` lines) over every (dataset, stage) pair
# whose effective params did not change: all but the pretrained weights of generated datasets' stages that no
# `set` line bound (those could not be resolved offline before: they are random now)
BOUND_BEFORE = {"synthetic": ["vggish", "vgg16", "inception_v3"], "synthetic-hard": ["vggish", "vgg16", "inception_v3"],
                "synthetic-large": ["vggish", "vgg16", "inception_v3"], "spoken-shapes": ["vgg16", "vgg16-logits"],
                "spoken-scenes": ["vgg16-maps"], "spoken-scenes-spokencoco": ["vgg16-maps"],
                "scenes-captions": ["resnet152-256", "resnet152-416"], "scenes-vg": ["resnet152-256", "resnet152-416"]}
STAGES_BEFORE = ["audio", "logmel", "vggish", "logmel-davenet", "vgg16", "inception_v3", "audio_features",
                 "visual_features", "cca", "cluster-cca", "tnn-ccca", "evaluate", "vase-2s", "vase-3s",
                 "vase-3s-finetune", "evaluate-speech", "logmel-vgs", "vgg16-maps", "vgs", "vgs-cnn0", "vgs-alignment",
                 "vgg16-logits", "spectrogram", "see-hear-read", "resnet152-256", "resnet152-400", "resnet152-416",
                 "dsve", "dsve-pointing"]
PARAMS_DIGEST = "5e5778ea5b5c986e"


def test_effective_params_of_every_stage_and_dataset_are_unchanged():
    cfg = load_config(REPO / "stages.yaml")
    datasets = [d for d in cfg.datasets if d != "coco-vegas"] + ["coco-vegas"]
    params = {}
    for d in sorted(datasets):
        for s in STAGES_BEFORE:
            p = json.loads(json.dumps(cfg.params_for(s, d), default=str))
            if d in BOUND_BEFORE and "weights" in p and s not in BOUND_BEFORE[d]:
                assert p["weights"] == "random:0", (d, s)
                continue
            params[f"{d}/{s}"] = p
    assert len(params) == 591 and hash_key(params) == PARAMS_DIGEST


def test_dataset_weights_must_be_random_seed_and_extract_must_name_feature_stages(tmp_path):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="dataset 'synthetic': weights: expected random:SEED"):
        load_config(_repo_config(tmp_path, synthetic={"weights": "imagenet"}))
    with pytest.raises(ConfigError, match="dataset 'synthetic': extract: 'cca' is not a feature stage"):
        load_config(_repo_config(tmp_path, synthetic={"extract": ["cca"]}))


# -- the front door, as a user types it ---------------------------------------------------------------------

def test_extract_on_synthetic_computes_exactly_what_its_methods_read(tmp_path):
    """`pipeline run extract --dataset synthetic` from an empty cache with no weights anywhere: audio, vggish and
    inception_v3, nothing else; then status has no "cannot resolve" line; a folder dataset over the same files,
    with per-stage bindings for its four networks only (two for TNN-C-CCA on CLIP + CLAP), runs too (the stages it leaves out are never resolved)."""
    path = _repo_config(tmp_path, synthetic={"params": {"n_classes": 2, "clips_per_class": 3, "duration": 1.0}})
    dry = cli("run", "extract", "--dataset", "synthetic", "--dry-run", "--config", str(path), env=_no_weights())
    assert "compute 6 of 6 clips" in dry.stdout and "dry run: nothing computed" in dry.stdout
    assert not (tmp_path / "cache" / "stores").exists()
    out = cli("run", "extract", "--dataset", "synthetic", "--config", str(path), env=_no_weights()).stdout
    stores = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "cache" / "stores").iterdir())
    assert stores == sorted(CCA_FAMILY), out
    status = cli("status", "--dataset", "synthetic", "--config", str(path), env=_no_weights()).stdout
    assert "cannot resolve" not in status
    assert [line.split()[0] for line in status.splitlines()] == CCA_FAMILY + ["cca", "cluster-cca", "tnn-ccca", "evaluate",
                                                                              *ENCODERS_ON_VIDEO]
    assert all("up to date" in line for line in status.splitlines()[:3]) and "missing" in status.splitlines()[3]
    everything = cli("status", "--all", "--dataset", "synthetic", "--config", str(path), env=_no_weights()).stdout
    assert "vgg16-maps" in everything and "left out: no method that applies" in everything

    doc = yaml.safe_load(path.read_text())
    doc["datasets"]["plain"] = {"adapter": "folder", "root": str(tmp_path / "data" / "synthetic"),
                                "set": {"vggish.weights": "random:0", "inception_v3.weights": "random:0",
                                        "clip-frames.weights": "random:0", "clap-audio.weights": "random:0"}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    plain = cli("run", "extract", "--dataset", "plain", "--config", str(path), env=_no_weights()).stdout
    assert "inception_v3: up to date, 6 clips reused" in plain  # the same files: the rows synthetic computed
    assert "cannot resolve" not in cli("status", "--dataset", "plain", "--config", str(path), env=_no_weights()).stdout
    # verify checks what applies, and never looks up the weights of what no method here reads (vgg16-maps)
    verified = cli("verify", "--dataset", "plain", "--config", str(path), env=_no_weights()).stdout
    assert re.search(r"^inception_v3: \d+ shard\(s\) verified$", verified, re.M) and "vgg16-maps" not in verified
    again = cli("run", "extract", "--dataset", "plain", "--stage", "vgg16-maps", "--config", str(path),
                env=_no_weights(), check=False)
    assert again.returncode == 2 and "vgg16-maps-" not in again.stdout  # asked for by name: it needs its weights
    assert "vgg16 weights 'imagenet'" in again.stderr and "random:0" in again.stderr
