import pytest
import yaml

from extractors.vgg16 import VGG16Config
from pipeline.config import ConfigError, load_config

from ..conftest import TINY, write_config


def _cfg(tmp_path, stages=None, datasets=None, **top):
    ds = datasets or {"tiny": {"adapter": "synthetic", "root": str(tmp_path / "d"), "params": TINY}}
    return write_config(tmp_path / "stages.yaml", tmp_path / "cache", ds, stages, **top)


AUDIO = {"group": "extract", "implementation": "audio"}


def test_default_stages_yaml_loads_and_orders():
    cfg = load_config("stages.yaml")
    assert cfg.order(["logmel"]) == ["audio", "logmel"]
    assert cfg.stages["logmel"].params == {"preset": "vggish", "pad_short": False}


@pytest.mark.parametrize("stages, message", [
    ({"a": {"group": "extract", "implementation": "nope"}}, "stage 'a': implementation: unknown implementation 'nope'"),
    ({"a": {**AUDIO, "params": {"rate": 1}}}, "stage 'a': params: unknown param 'rate'"),
    ({"a": {**AUDIO, "params": {"sample_rate": "fast"}}}, "stage 'a': params.sample_rate: expected int"),
    ({"a": {**AUDIO, "upstream": ["ghost"]}}, "stage 'a': upstream: no stage named 'ghost'"),
    ({"a": {**AUDIO, "upstream": ["b"]}, "b": {**AUDIO, "upstream": ["a"]}}, "cycle a -> b -> a"),
    ({"a": {"implementation": "audio"}}, "stage 'a': missing field 'group'"),
    ({"a": {**AUDIO, "colour": 1}}, "stage 'a': unknown field 'colour'"),
    ({"m": {"group": "extract", "implementation": "logmel"}}, "stage 'm': upstream: 'logmel' needs exactly one"),
    ({"m": {"group": "extract", "implementation": "logmel", "params": {"preset": "mfcc"}}},
     "params.preset: expected one of 'vggish', 'davenet', 'vgs'"),
    ({"a": {**AUDIO, "execution": {"workers": "two"}}}, "stage 'a': execution.workers: expected int"),
])
def test_invalid_stage_names_stage_and_field(tmp_path, stages, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(_cfg(tmp_path, stages))


def test_set_overrides_are_validated(tmp_path):
    path = _cfg(tmp_path, {"a": AUDIO})
    assert load_config(path, ["a.sample_rate=8000"]).stages["a"].params["sample_rate"] == 8000
    with pytest.raises(ConfigError, match="unknown stage 'b'"):
        load_config(path, ["b.sample_rate=8000"])
    with pytest.raises(ConfigError, match="unknown param 'rate'"):
        load_config(path, ["a.rate=8000"])
    with pytest.raises(ConfigError, match="expected STAGE.PARAM=VALUE"):
        load_config(path, ["sample_rate"])


def test_dataset_errors_and_cache_precedence(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="dataset 'x': adapter: unknown dataset adapter 'zip'"):
        load_config(_cfg(tmp_path, {"a": AUDIO}, {"x": {"adapter": "zip", "root": "r"}}))
    with pytest.raises(ConfigError, match="dataset 'x': params.n_classes: expected int"):
        load_config(_cfg(tmp_path, {"a": AUDIO}, {"x": {"adapter": "synthetic", "root": "r",
                                                           "params": {"n_classes": 2.5}}}))
    path = _cfg(tmp_path, {"a": AUDIO})
    assert load_config(path).cache == tmp_path / "cache"
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "env"))
    assert load_config(path).cache == tmp_path / "env"
    assert load_config(path, cache=tmp_path / "flag").cache == tmp_path / "flag"


def test_yaml_is_parsed_safely(tmp_path):
    p = tmp_path / "stages.yaml"
    p.write_text("stages: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text(yaml.safe_dump({"stagez": {}}))
    with pytest.raises(ConfigError, match="unknown top-level field 'stagez'"):
        load_config(p)


@pytest.mark.parametrize("stages, message", [
    ({"feat/audio": AUDIO}, "stage 'feat/audio': name 'feat/audio' must be letters"),
    ({"a": {"group": "extract", "implementation": ["audio"]}}, "stage 'a': implementation: expected a string"),
    ({"a": {**AUDIO, "params": {"sample_rate": 0}}}, "sample_rate must be between 1000 and 384000"),
    ({"a": {**AUDIO, "execution": {"shard_size": 0}}}, "shard_size must be >= 1"),
])
def test_review_holes_are_config_errors(tmp_path, stages, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_cfg(tmp_path, stages))


def test_more_config_holes(tmp_path):
    p = _cfg(tmp_path, {"a": AUDIO})
    p.write_text(p.read_text().replace(f"cache: {tmp_path / 'cache'}", "cache: 5"))
    with pytest.raises(ConfigError, match="cache: expected a string"):
        load_config(p)
    with pytest.raises(ConfigError, match="size must be an even number"):
        load_config(_cfg(tmp_path, {"a": AUDIO}, {"x": {"adapter": "synthetic", "root": "r",
                                                           "params": {"size": 95}}}))
    with pytest.raises(ConfigError, match="not valid YAML; quote it"):
        load_config(_cfg(tmp_path, {"a": AUDIO}), ["a.sample_rate=[1"])
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(tmp_path)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        load_config(_cfg(tmp_path, {"a": AUDIO}), cache=tmp_path / "afile")


def test_dataset_set_binds_params_and_cli_set_wins(tmp_path):
    ds = {"tiny": {"adapter": "synthetic", "root": str(tmp_path / "d"), "params": TINY,
                   "set": {"a.sample_rate": 8000}},
          "other": {"adapter": "synthetic", "root": str(tmp_path / "e"), "params": TINY}}
    path = _cfg(tmp_path, {"a": AUDIO}, ds)
    cfg = load_config(path)
    assert cfg.params_for("a", "tiny")["sample_rate"] == 8000
    assert cfg.params_for("a", "other")["sample_rate"] == 16000
    assert load_config(path, ["a.sample_rate=22050"]).params_for("a", "tiny")["sample_rate"] == 22050
    ds["tiny"]["set"] = {"a.rate": 1}
    with pytest.raises(ConfigError, match="dataset 'tiny': set: stage 'a': unknown param 'rate'"):
        load_config(_cfg(tmp_path, {"a": AUDIO}, ds))


def test_params_added_later_stay_out_of_keys_at_their_neutral_value(tmp_path, tiny_synthetic_root):
    from extractors.vgg16 import VGG16
    from pipeline.cache import hash_key
    from pipeline.config import key_params
    from pipeline.runner import resolve

    stages = {"vgg16": {"group": "extract", "implementation": "vgg16", "params": {"weights": "random:0"}}}
    project = write_config(tmp_path / "stages.yaml", tmp_path / "cache",
                           {"tiny": {"adapter": "synthetic", "root": str(tiny_synthetic_root), "params": TINY}}, stages)
    plain = resolve(load_config(project), "tiny", execution={"media_backend": "ffmpeg"}).stages["vgg16"]
    assert "crop_size" in plain.params and "crop_size" not in key_params(VGG16Config, plain.params)
    # the key is the one the stage had before crop_size, precision, resize and the pyav backend existed: its params
    # hashed without them
    before = {k: v for k, v in plain.params.items() if k not in ("crop_size", "precision", "resize")}
    identity = {"implementation": "vgg16", "version": VGG16.VERSION, "params": before, "weights": plain.attrs["weights"],
                "upstream": [], "dataset": "tiny", "backend": "zarr"}
    assert plain.view_key == hash_key(identity)  # (the view key: what the store key was before content rows)
    # decoded by PyAV (the default), the arrays differ in their last bits: another key
    assert resolve(load_config(project), "tiny").stages["vgg16"].view_key == hash_key({**identity, "media": "pyav"})
    ffmpeg = {"media_backend": "ffmpeg"}
    assert resolve(load_config(project, ["vgg16.crop_size=null"]), "tiny",
                   execution=ffmpeg).stages["vgg16"].store_key == plain.store_key
    assert resolve(load_config(project, ["vgg16.crop_size=64"]), "tiny",
                   execution=ffmpeg).stages["vgg16"].store_key != plain.store_key
    from models.vase.trainer import VASEConfig

    assert key_params(VASEConfig, {"lr": 1.0, "finetune_cnn": False, "crop_size": None}) == {"lr": 1.0}
    assert key_params(VASEConfig, {"finetune_cnn": True, "crop_size": 64}) == {"finetune_cnn": True, "crop_size": 64}


def test_plugins_are_imported_from_the_config_folder_and_bad_ones_named(tmp_path):
    from pipeline.registry import TRAINERS

    (tmp_path / "my_method.py").write_text(
        "from pipeline.registry import register_trainer\n"
        "from models.common.base import ClipVectorTrainer\n\n"
        "@register_trainer\nclass Mine(ClipVectorTrainer):\n    name = 'mine-from-a-plugin'\n    VERSION = 1\n"
        "    from models.common.base import TrainConfig as Config\n")
    stages = {"mine": {"group": "train", "implementation": "mine-from-a-plugin"}}
    path = write_config(tmp_path / "stages.yaml", tmp_path / "cache", {"d": {"adapter": "folder", "root": "d"}},
                        stages, plugins=["my_method"])
    try:
        assert load_config(path).stages["mine"].implementation == "mine-from-a-plugin"
        assert "mine-from-a-plugin" in TRAINERS
    finally:  # other tests in this process iterate the registry
        TRAINERS._items.pop("mine-from-a-plugin", None)
    for plugins, message in ((["no_such_module_here"], "plugins: cannot import 'no_such_module_here'"),
                             ("my_method", "plugins: expected a list of module names")):
        bad = write_config(tmp_path / "bad.yaml", tmp_path / "cache", {"d": {"adapter": "folder", "root": "d"}},
                           stages, plugins=plugins)
        with pytest.raises(ConfigError, match=message):
            load_config(bad)
