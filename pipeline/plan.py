"""The plan: which stages run for (targets, dataset), which are left out, and one reason for each.

Decided in one place, from the DAG and the dataset alone, before any stage is resolved: a stage that is left
out never has its key computed, so its weights are never looked up. A stage applies to a dataset when it can
run there (a feature stage reads what the dataset holds; a method's task applies to the manifest and its views
bind to feature stages that apply). What runs is the targets (a group's stages, or one `--stage`) and what they
read: for a feature group, the stages that the methods applying to the dataset read, plus those the dataset
lists under `extract:` (in a DAG without methods: the group's stages that apply).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import ConfigError, PipelineConfig, implementation
from .context import PipelineError
from .registry import EVALUATORS, TASKS, TRAINERS

if TYPE_CHECKING:
    from .datasets import DatasetAdapter, Manifest


def reads_from_dataset(impl: Any) -> str | None:
    """What a root stage reads from its dataset ('media', 'features', or 'text': the items' captions and
    transcripts); None when it reads upstream stores (and for train and evaluate stages)."""
    from .training import is_run_stage

    if is_run_stage(impl) or getattr(impl, "consumes", None) is not None:
        return None
    return getattr(impl, "reads", "media")


@dataclass
class StagePlan:
    """One stage's place in a plan: whether it runs (computed or reused), and why."""

    name: str
    runs: bool
    reason: str


@dataclass
class Plan:
    """Every stage of the config, in DAG order, with whether it runs for this dataset and why."""

    dataset: str
    stages: dict[str, StagePlan]
    manifest: "Manifest | None"
    why_not: dict[str, str]  # stage -> why it does not apply to the dataset (absent: it applies)
    reads: dict[str, list[str]]  # applying stage -> the stages it reads here (a method: its bound views)
    foreign: dict[str, str] = field(default_factory=dict)  # evaluate stage -> dataset whose models it applies

    @property
    def selected(self) -> list[str]:
        """The stages that run (computed or reused), in DAG order."""
        return [n for n, s in self.stages.items() if s.runs]

    @property
    def applying(self) -> list[str]:
        """The stages that apply to the dataset, whether or not this plan runs them."""
        return [n for n in self.stages if n not in self.why_not]

    def closure(self, names: list[str]) -> list[str]:
        """`names` and what they read here, transitively, in DAG order (a foreign evaluate stage's train
        stages belong to the other dataset, so they are not among them)."""
        seen = set(_closure(self.reads, names))
        return [n for n in self.stages if n in seen]


class _NotApplicable(Exception):
    pass


def _run_stage_reads(cfg: PipelineConfig, name: str, impl: Any, manifest: "Manifest | None",
                     available: dict[str, str | None], why_not: dict[str, str], dataset: str,
                     foreign: dict[str, str]) -> list[str]:
    """The stages a train or evaluate stage reads on this dataset; _NotApplicable saying why it cannot run."""
    from .training import TrainError, is_run_stage
    from .training.keys import applies, model_dataset, task_for, view_bindings

    spec = cfg.stages[name]
    runs = [u for u in spec.upstream if is_run_stage(implementation(cfg.stages[u].implementation))]
    if impl.name in TRAINERS:
        if manifest is not None and (why := applies(impl, manifest)):
            raise _NotApplicable(why)
        for u in runs:
            if u in why_not:
                raise _NotApplicable(f"it starts from '{u}', which does not apply")
        try:
            trainer = impl(impl.Config(**cfg.params_for(name, dataset)), "cpu")
            views = view_bindings(cfg, name, trainer, available, dataset)
        except (TrainError, ValueError) as e:
            raise _NotApplicable(str(e)) from None
        return [u for u in spec.upstream if u in views.values() or u in runs]
    if not runs:
        raise _NotApplicable("it lists no train stage upstream")
    task = getattr(impl, "task", "classes")
    other = model_dataset(cfg, name, dataset)
    if other is not None:  # it applies the models trained on `other` to this dataset's features
        if manifest is not None and (why := TASKS.get(task)().applies(manifest)):
            raise _NotApplicable(f"it scores '{task}', and {why}")
        if other not in cfg.datasets:
            raise _NotApplicable(f"its model_dataset '{other}' is no dataset of {cfg.path.name}")
        if not cfg.datasets[other].root.exists():
            raise _NotApplicable(f"it applies the models trained on dataset '{other}', whose root "
                                 f"{cfg.datasets[other].root} does not exist")
        needed: set[str] = set()
        for u in runs:
            cls = TRAINERS.get(cfg.stages[u].implementation)
            try:
                trainer = cls(cls.Config(**cfg.params_for(u, other)), "cpu")
                needed.update(view_bindings(cfg, u, trainer, available, dataset, spec.views).values())
            except (TrainError, ValueError) as e:
                raise _NotApplicable(str(e)) from None
        foreign[name] = other
        return [u for u in spec.upstream if u in needed] + sorted(needed - set(spec.upstream))
    ok = [u for u in runs if u not in why_not]
    if not ok:
        raise _NotApplicable("every train stage it reads does not apply")
    if impl.name in EVALUATORS and manifest is not None:
        learns = {u: task_for(TRAINERS.get(cfg.stages[u].implementation), manifest) for u in ok
                  if cfg.stages[u].implementation in TRAINERS}
        matching = [u for u in ok if learns.get(u, task) == task]
        if not matching:
            u = next(iter(learns))
            raise _NotApplicable(f"it scores '{task}' runs, and on this dataset '{u}' learns '{learns[u]}'")
        ok = matching
    return ok


def make_plan(cfg: PipelineConfig, adapter: "DatasetAdapter", group: str | None = None, stage: str | None = None,
              manifest: "Manifest | None" = None, prepare: bool = True) -> Plan:
    """Which stages run for `group` (or one `stage`; neither: every method that applies and what it reads) on
    the adapter's dataset, and why each other stage is left out. The manifest is read (after `prepare`) only
    when the config has train or evaluate stages to judge; nothing is resolved, no weights are looked up."""
    from .training import is_run_stage

    dataset = adapter.dataset_name
    if stage is not None and stage not in cfg.stages:
        raise ConfigError(f"{cfg.path}: unknown stage '{stage}'; known: {', '.join(cfg.stages)}")
    if stage is not None and group and cfg.stages[stage].group != group:
        raise ConfigError(f"stage '{stage}' is in group '{cfg.stages[stage].group}', not '{group}'")
    members = cfg.group(group) if group and stage is None else []  # (an unknown group fails here, listing them)
    order = cfg.order()
    impls = {n: implementation(cfg.stages[n].implementation) for n in order}
    run_stages = [n for n in order if is_run_stage(impls[n])]
    if manifest is None and run_stages:
        if prepare:
            adapter.prepare()
        manifest = adapter.manifest()

    why_not: dict[str, str] = {}
    reads: dict[str, list[str]] = {}
    available: dict[str, str | None] = {}  # feature stages that apply -> their modality
    foreign: dict[str, str] = {}
    for n in order:
        spec, impl = cfg.stages[n], impls[n]
        if n in run_stages:
            try:
                reads[n] = _run_stage_reads(cfg, n, impl, manifest, available, why_not, dataset, foreign)
            except _NotApplicable as e:
                why_not[n] = str(e)
            continue
        source = reads_from_dataset(impl)
        bad = [u for u in spec.upstream if u in why_not]
        roles = getattr(impl, "roles", ())
        if source not in (None, "text", adapter.kind):  # text: any dataset whose items have some
            why_not[n] = f"it reads {source}, and dataset '{dataset}' holds {adapter.kind}"
        elif source == "text" and manifest is not None and not any(c.text for c in manifest.clips):
            why_not[n] = f"it reads the items' text, and no item of dataset '{dataset}' has a caption or transcript"
        elif source == "media" and roles and manifest is not None and \
                not any(r in c.media for c in manifest.clips for r in roles):
            why_not[n] = f"it decodes {' or '.join(roles)}, and no item of dataset '{dataset}' has any"
        elif bad:
            why_not[n] = f"it reads '{bad[0]}', which does not apply"
        else:
            reads[n] = list(spec.upstream)
            available[n] = impl(impl.Config(**cfg.params_for(n, dataset))).modality

    listed = cfg.datasets[dataset].extract
    methods = [n for n in run_stages if n not in why_not]
    for_methods = set(_closure(reads, methods))
    method_readers: dict[str, list[str]] = {}
    for n in order:
        if n in for_methods:
            for u in reads.get(n, []):
                method_readers.setdefault(u, []).append(n)
    targets: dict[str, str] = {}
    if stage is not None:
        if stage in why_not:
            raise PipelineError(f"stage '{stage}' does not apply to dataset '{dataset}': {why_not[stage]}")
        targets[stage] = "asked for (--stage)"
    elif group:
        fitting = [n for n in members if n not in why_not]
        if not fitting:
            kinds = {reads_from_dataset(impls[n]) for n in members} - {None}
            if kinds and adapter.kind not in kinds:  # a feature group of the other kind of dataset
                hint = [n for n in order if reads_from_dataset(impls[n]) == adapter.kind]
                more = f"; stages that read {adapter.kind}: {', '.join(hint)} (group " \
                       f"'{cfg.stages[hint[0]].group}')" if hint else ""
                raise PipelineError(f"dataset '{dataset}' holds {adapter.kind}, and the stages of group '{group}' "
                                    f"read {', '.join(sorted(kinds))}{more}")
            raise PipelineError(f"no stage of group '{group}' applies to dataset '{dataset}': "
                                + "; ".join(f"{n}: {why_not[n]}" for n in members))
        for n in fitting:
            if n in run_stages:
                targets[n] = f"in group '{group}'"
            elif n in listed:
                targets[n] = f"listed under dataset '{dataset}': extract"
            elif n in for_methods:
                targets[n] = f"read by {', '.join(method_readers[n])}"
            elif not run_stages:  # a DAG of feature stages alone: its group is what there is to compute
                targets[n] = f"in group '{group}' (the DAG has no method)"
    else:
        targets = {n: "a method that applies" for n in methods}
        if not run_stages:  # a DAG of feature stages alone
            targets = {n: "the DAG has no method" for n in order if n not in why_not}
        targets.update({n: f"listed under dataset '{dataset}': extract" for n in listed if n not in why_not})

    runs = set(_closure(reads, list(targets)))
    readers: dict[str, list[str]] = {}
    for n in order:
        if n in runs:
            for u in reads.get(n, []):
                readers.setdefault(u, []).append(n)
    trained_elsewhere = {u: (e, foreign[e]) for e in foreign if e in runs for u in cfg.stages[e].upstream
                         if u in run_stages}
    stages: dict[str, StagePlan] = {}
    for n in order:
        if n in runs:
            why = f"read by {', '.join(readers[n])}" if n in readers else targets.get(n, "")
            stages[n] = StagePlan(n, True, why)
        elif n in why_not:
            stages[n] = StagePlan(n, False, f"does not apply: {why_not[n]}")
        elif n in trained_elsewhere:
            e, other = trained_elsewhere[n]
            stages[n] = StagePlan(n, False, f"'{e}' applies its model trained on dataset '{other}'")
        elif n not in for_methods and n not in listed and run_stages:
            stages[n] = StagePlan(n, False, f"no method that applies to '{dataset}' reads it (name it under the "
                                            "dataset's `extract:` to compute it anyway)")
        elif stage is not None:
            stages[n] = StagePlan(n, False, f"'{stage}' does not read it")
        else:
            stages[n] = StagePlan(n, False, f"group '{cfg.stages[n].group}' (`pipeline run {cfg.stages[n].group}`)")
    return Plan(dataset, stages, manifest, why_not, reads, {e: d for e, d in foreign.items() if e in runs})


def _closure(reads: dict[str, list[str]], names: list[str]) -> list[str]:
    seen: list[str] = []
    todo = list(names)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.append(n)
            todo.extend(reads.get(n, []))
    return seen
