"""stages.yaml: datasets, stages and execution defaults, validated into a DAG.

Every error names the file, the stage (or dataset) and the field, and says what was expected.
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .cache import key_params  # noqa: F401  (here too: where the runner and the training keys import it)
from .media.common import DEFAULT_TIMEOUT
from .registry import DATASETS, EVALUATORS, EXTRACTORS, TRAINERS, RegistryError


class ConfigError(ValueError):
    """stages.yaml (or a --set override) is invalid; the message names stage and field."""


@dataclass
class ExecutionParams:
    """How to run, never what to compute: none of these go into a cache key, except `media_backend` in the
    key of the stages that decode media (the two backends' arrays differ in their last bits)."""

    workers: int = 2
    executor: Literal["local", "dask"] = "local"
    scheduler: str | None = None
    shard_size: int | None = None  # clips per shard; None: sized to the work (runner.shard_size_for)
    decode_threads: int = 2  # per worker: clips decoded at once, each by its own decoder process
    batch_size: int = 32
    device: str = "auto"
    progress: bool = True
    media_backend: Literal["pyav", "ffmpeg"] = "pyav"  # decoding changes the last bits: in the key of media stages
    decode_timeout: float = DEFAULT_TIMEOUT  # seconds one clip may take to decode before it fails as hung
    weights_dir: str | None = None  # named weights files are looked for here first (their digest is in the key)

    def __post_init__(self) -> None:
        for name in ("workers", "shard_size", "decode_threads", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.decode_timeout <= 0:
            raise ValueError(f"decode_timeout must be > 0 seconds, got {self.decode_timeout}")


@dataclass
class DatasetSpec:
    name: str
    adapter: str
    root: Path
    params: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> params, for this dataset
    weights: str | None = None  # `weights: random:SEED`: every stage with a `weights` param runs on it here
    weights_dir: Path | None = None  # `weights: DIR`: named weights files are looked for there first
    extract: list[str] = field(default_factory=list)  # feature stages computed here even if no method reads them


@dataclass
class StageSpec:
    name: str
    group: str
    implementation: str
    upstream: list[str]
    params: dict[str, Any]
    execution: dict[str, Any] = field(default_factory=dict)
    pinned: set[str] = field(default_factory=set)  # params set by --set: a dataset's `set` does not change them
    views: dict[str, str] = field(default_factory=dict)  # a trainer's view name -> the upstream stage it reads


@dataclass
class PipelineConfig:
    path: Path
    cache: Path
    backend: str
    default_dataset: str | None
    datasets: dict[str, DatasetSpec]
    stages: dict[str, StageSpec]
    execution: ExecutionParams

    def order(self, names: list[str] | None = None) -> list[str]:
        """Topological order of `names` plus everything upstream of them (all stages by default)."""
        wanted = set(self.closure(names if names is not None else list(self.stages)))
        out: list[str] = []
        seen: set[str] = set()

        def visit(n: str) -> None:
            if n in seen:
                return
            seen.add(n)
            for u in self.stages[n].upstream:
                visit(u)
            out.append(n)

        for n in self.stages:
            if n in wanted:
                visit(n)
        return out

    def closure(self, names: list[str]) -> list[str]:
        """`names` and all their upstream stages."""
        out, todo = [], list(names)
        while todo:
            n = todo.pop()
            if n in out:
                continue
            out.append(n)
            todo.extend(self.stages[n].upstream)
        return out

    def group(self, group: str) -> list[str]:
        """Stages of a group, or fail listing the groups there are."""
        names = [n for n, s in self.stages.items() if s.group == group]
        if not names:
            groups = sorted({s.group for s in self.stages.values()})
            raise ConfigError(f"{self.path}: no stage in group '{group}'; groups: {', '.join(groups)}")
        return names

    def dataset(self, name: str | None) -> DatasetSpec:
        """The named dataset, or the default one."""
        name = name or self.default_dataset
        if name is None:
            raise ConfigError(f"{self.path}: no --dataset given and no default_dataset set")
        if name not in self.datasets:
            raise ConfigError(f"{self.path}: unknown dataset '{name}'; "
                              f"known: {', '.join(sorted(self.datasets))}")
        return self.datasets[name]

    def params_for(self, stage: str, dataset: str) -> dict[str, Any]:
        """A stage's identity params for one dataset: stages.yaml, the dataset's `set`, then --set."""
        spec = self.stages[stage]
        ds = self.datasets[dataset]
        extra = {k: v for k, v in ds.overrides.get(stage, {}).items() if k not in spec.pinned}
        if ds.weights is not None and "weights" not in extra and "weights" not in spec.pinned and \
                "weights" in {f.name for f in dataclasses.fields(implementation(spec.implementation).Config)}:
            extra["weights"] = ds.weights  # the dataset's one line; a stage the dataset names in `set` wins
        if not extra:
            return spec.params
        impl = implementation(spec.implementation)
        return coerce_params(impl.Config, {**spec.params, **extra},
                             f"{self.path}: dataset '{dataset}': set: stage '{stage}'")

    def execution_for(self, stage: str, dataset: str | None = None, **overrides: Any) -> ExecutionParams:
        """Execution params for one stage: defaults, then the stage's own, the dataset's weights directory, then
        CLI overrides."""
        ds = self.datasets.get(dataset) if dataset else None
        merged = {**dataclasses.asdict(self.execution), **self.stages[stage].execution,
                  **({"weights_dir": str(ds.weights_dir)} if ds is not None and ds.weights_dir else {}),
                  **{k: v for k, v in overrides.items() if v is not None}}
        return ExecutionParams(**coerce_params(ExecutionParams, merged, f"{self.path}: stage '{stage}': execution"))


def implementation(name: str) -> Any:
    """Look an implementation up in the extractor, trainer and evaluator registries."""
    for reg in (EXTRACTORS, TRAINERS, EVALUATORS):
        if name in reg:
            return reg.get(name)
    known = EXTRACTORS.names() + TRAINERS.names() + EVALUATORS.names()
    raise RegistryError(f"unknown implementation '{name}'; known: {', '.join(sorted(known))}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        names = " or ".join(_type_name(a) if a is not type(None) else "null" for a in typing.get_args(tp))
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            (arg, *_) = typing.get_args(tp) or (Any,)
            return [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
    else:
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def coerce_params(cls: type, params: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """Check `params` against the dataclass `cls` (names and types); return them with defaults filled."""
    params = params or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: expected a mapping of params, got {type(params).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown param '{unknown[0]}'; known: {', '.join(fields) or '(none)'}")
    out = {}
    for name, f in fields.items():
        if name in params:
            out[name] = _coerce(params[name], hints[name], f"{where}.{name}")
        elif f.default is not dataclasses.MISSING:
            out[name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[name] = f.default_factory()
        else:
            raise ConfigError(f"{where}: required param '{name}' is missing")
    try:
        cls(**out)  # a Config's __post_init__ checks ranges
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
    return out


def _expect(mapping: Any, where: str) -> dict:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    return mapping


def _fields(section: Any, where: str, allowed: set[str], required: tuple[str, ...]) -> dict:
    section = _expect(section, where)
    bad = sorted(set(section) - allowed)
    if bad:
        raise ConfigError(f"{where}: unknown field '{bad[0]}'; known: {', '.join(sorted(allowed))}")
    for req in required:
        if req not in section:
            raise ConfigError(f"{where}: missing field '{req}'")
    return section


_TOP = {"cache", "backend", "default_dataset", "execution", "datasets", "stages", "plugins"}
_STAGE_FIELDS = {"group", "implementation", "upstream", "params", "execution", "views"}
_DATASET_FIELDS = {"adapter", "root", "params", "set", "weights", "extract"}


def parse_override(text: str) -> tuple[str, str, Any]:
    """'stage.param=value' -> (stage, param, value parsed as a YAML scalar)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set '{text}': expected STAGE.PARAM=VALUE, e.g. logmel.preset=davenet")
    lhs, raw = text.split("=", 1)
    stage, param = lhs.split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set '{text}': the value is not valid YAML; quote it, e.g. "
                          f"{lhs}='\"{raw}\"'") from None
    return stage.strip(), param.strip(), value


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: name {name!r} must be letters, digits, '_' or '-' "
                          "(it becomes part of cache paths)")
    return name


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
    return value


def load_plugins(modules: Any, base: Path, where: str) -> None:
    """Import the modules a stages.yaml names under `plugins:` (methods, tasks, extractors or corpora defined outside
    this package register themselves on import); the file's own folder is searched first."""
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise ConfigError(f"{where}: plugins: expected a list of module names, got {modules!r}")
    import importlib
    import sys

    if modules and str(base) not in sys.path:
        sys.path.insert(0, str(base))
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"{where}: plugins: cannot import '{name}' ({e}); give a module importable from "
                              f"{base} or the Python path") from None


def load_config(path: str | os.PathLike = "stages.yaml", overrides: list[str] | tuple[str, ...] = (),
                cache: str | os.PathLike | None = None) -> PipelineConfig:
    """Read and validate stages.yaml; apply `--set` overrides; resolve the cache root."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} is not a file; run from the repository root or pass --config PATH")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    raw = _expect(raw, str(path))
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise ConfigError(f"{path}: unknown top-level field '{unknown[0]}'; known: {', '.join(sorted(_TOP))}")
    base = path.parent.absolute()
    load_plugins(raw.get("plugins") or [], base, str(path))

    datasets: dict[str, DatasetSpec] = {}
    for name, d in _expect(raw.get("datasets") or {}, f"{path}: datasets").items():
        where = f"{path}: dataset '{name}'"
        _name(name, where)
        d = _fields(d, where, _DATASET_FIELDS, ("adapter", "root"))
        try:
            adapter = DATASETS.get(_string(d["adapter"], f"{where}: adapter"))
        except RegistryError as e:
            raise ConfigError(f"{where}: adapter: {e}") from None
        params = coerce_params(adapter.Config, d.get("params"), f"{where}: params")
        root = Path(os.path.expanduser(_string(d["root"], f"{where}: root")))
        bound: dict[str, dict[str, Any]] = {}
        for key, value in _expect(d.get("set") or {}, f"{where}: set").items():
            stage, param, _ = parse_override(f"{key}=")
            bound.setdefault(stage, {})[param] = value
        weights, weights_dir = d.get("weights"), None
        if weights is not None and not (isinstance(weights, str) and (re.fullmatch(r"random:\d+", weights)
                                                                      or "/" in weights)):
            raise ConfigError(f"{where}: weights: expected random:SEED (every network of the dataset randomly "
                              f"initialised) or the path of a directory of weights files (with a '/', e.g. "
                              f"./weights or ~/models), got {weights!r}; bind one stage's weights under `set:`")
        if weights is not None and not weights.startswith("random:"):
            weights_dir = Path(os.path.expanduser(weights))
            weights_dir, weights = weights_dir if weights_dir.is_absolute() else base / weights_dir, None
        extract = d.get("extract") or []
        if not isinstance(extract, list) or not all(isinstance(x, str) for x in extract):
            raise ConfigError(f"{where}: extract: expected a list of stage names, got {extract!r}")
        datasets[name] = DatasetSpec(name, d["adapter"], root if root.is_absolute() else base / root, params,
                                     bound, weights, weights_dir, list(extract))

    stages: dict[str, StageSpec] = {}
    for name, s in _expect(raw.get("stages") or {}, f"{path}: stages").items():
        where = f"{path}: stage '{name}'"
        _name(name, where)
        s = _fields(s, where, _STAGE_FIELDS, ("group", "implementation"))
        _string(s["group"], f"{where}: group")
        try:
            impl = implementation(_string(s["implementation"], f"{where}: implementation"))
        except RegistryError as e:
            raise ConfigError(f"{where}: implementation: {e}") from None
        upstream = s.get("upstream") or []
        if isinstance(upstream, str):
            upstream = [upstream]
        if not isinstance(upstream, list) or not all(isinstance(u, str) for u in upstream):
            raise ConfigError(f"{where}: upstream: expected a list of stage names, got {upstream!r}")
        views = dict(_expect(s.get("views") or {}, f"{where}: views"))
        for view, stage in views.items():
            if not isinstance(stage, str) or stage not in upstream:
                raise ConfigError(f"{where}: views: '{view}' must name one of the stage's upstream stages "
                                  f"({', '.join(upstream) or 'none'}), got {stage!r}")
        stages[name] = StageSpec(name, s["group"], s["implementation"], upstream,
                                 dict(_expect(s.get("params") or {}, f"{where}: params")),
                                 dict(_expect(s.get("execution") or {}, f"{where}: execution")), views=views)

    for text in overrides:
        stage, param, value = parse_override(text)
        if stage not in stages:
            raise ConfigError(f"--set {text}: unknown stage '{stage}'; known: {', '.join(stages)}")
        stages[stage].params[param] = value
        stages[stage].pinned.add(param)

    for name, s in stages.items():
        impl = implementation(s.implementation)
        s.params = coerce_params(impl.Config, s.params, f"{path}: stage '{name}': params")
        ExecutionParams(**coerce_params(ExecutionParams, {**s.execution}, f"{path}: stage '{name}': execution"))
        for u in s.upstream:
            if u not in stages:
                raise ConfigError(f"{path}: stage '{name}': upstream: no stage named '{u}'; "
                                  f"known: {', '.join(stages)}")
        consumes = getattr(impl, "consumes", None)
        if consumes:
            producers = [u for u in s.upstream if getattr(implementation(stages[u].implementation),
                                                          "produces", None) == consumes]
            if len(producers) != 1:
                raise ConfigError(f"{path}: stage '{name}': upstream: '{s.implementation}' needs exactly one "
                                  f"upstream stage producing '{consumes}', found {producers or 'none'}")
    _check_acyclic(stages, path)
    for ds in datasets.values():
        for stage in ds.extract:
            if stage not in stages or stages[stage].implementation not in EXTRACTORS:
                raise ConfigError(f"{path}: dataset '{ds.name}': extract: '{stage}' is not a feature stage; "
                                  f"feature stages: {', '.join(n for n, s in stages.items() if s.implementation in EXTRACTORS)}")
        for stage, params in ds.overrides.items():
            if stage not in stages:
                raise ConfigError(f"{path}: dataset '{ds.name}': set: unknown stage '{stage}'; "
                                  f"known: {', '.join(stages)}")
            impl = implementation(stages[stage].implementation)
            coerce_params(impl.Config, {**stages[stage].params, **params},
                          f"{path}: dataset '{ds.name}': set: stage '{stage}'")

    execution = ExecutionParams(**coerce_params(ExecutionParams, raw.get("execution"), f"{path}: execution"))
    default_dataset = raw.get("default_dataset")
    if default_dataset is not None and _string(default_dataset, f"{path}: default_dataset") not in datasets:
        raise ConfigError(f"{path}: default_dataset: no dataset named '{default_dataset}'")
    backend = _string(raw.get("backend", "zarr"), f"{path}: backend")
    from . import store  # noqa: F401  (registers backends)
    from .registry import STORE_BACKENDS

    if backend not in STORE_BACKENDS:
        raise ConfigError(f"{path}: backend: unknown '{backend}'; known: {', '.join(STORE_BACKENDS.names())}")
    if "cache" in raw:
        _string(raw["cache"], f"{path}: cache")
    cache_root = Path(cache or os.environ.get("PIPELINE_CACHE") or raw.get("cache") or ".pipeline-cache")
    cache_root = Path(os.path.expanduser(str(cache_root)))
    if not cache_root.is_absolute():
        cache_root = (Path.cwd() if (cache or os.environ.get("PIPELINE_CACHE")) else base) / cache_root
    if cache_root.exists() and not cache_root.is_dir():
        raise ConfigError(f"cache root {cache_root} exists and is not a directory; pass --cache DIR")
    return PipelineConfig(path, cache_root, backend, default_dataset, datasets, stages, execution)


def _check_acyclic(stages: dict[str, StageSpec], path: Path) -> None:
    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = trail[trail.index(n):] + [n]
            raise ConfigError(f"{path}: stage '{n}': upstream: cycle {' -> '.join(cycle)}")
        state[n] = 1
        for u in stages[n].upstream:
            visit(u, trail + [n])
        state[n] = 2

    for n in stages:
        visit(n, [])
