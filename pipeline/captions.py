"""Train stages over paired items (spoken captions of images, VASE): splits, epoch checkpoints, Recall@K.

A captions trainer reads a speech store (log-mel rows, `[T, 40]` per caption) and an image store
(one feature row per caption's image, e.g. VGG16 fc7), plus the transcripts for three streams. The
dataset's published split decides the roles: `train` trains, `val` (or `dev`) selects the model
(best rsum after each epoch), `test` is evaluated; a corpus without a test split (Places audio)
is evaluated on `val`, as the reference code does, and metrics.json says so.

Run directory: cache/runs/<dataset>/<stage>-<key>/ with params.yaml, checkpoint.pt (after every
epoch: resume point), model_best.pt (the best epoch so far), history.json and training_curve.png,
then model.pt (the selected model), test_embeddings.npz, embeddings/{audio,visual[,text]} stores
(one row per caption; visual = its image's embedding) and metrics.json, written last.
A stage whose upstream holds another captions train stage starts from that run's model.pt
(weights only, fresh optimizer: VASE's stage 2). With `finetune_cnn` the visual stage's CNN (its
architecture and weights) becomes the first layer of the image branch and trains on the raw pictures,
decoded and resized exactly as that stage decoded them.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .cache import hash_key
from .registry import TRAINERS
from .store import FeatureStore

log = logging.getLogger(__name__)

VAL_SPLITS = ("val", "dev", "valid", "validation")
_PRELOAD_BYTES = 1 << 30  # speech features smaller than this are read once and kept in memory
_PICTURE_BYTES = 2 << 30  # decoded pictures (finetune_cnn) kept in memory up to this much


def task_of(impl: Any) -> str:
    """What a trainer learns from, or an evaluator reads: 'classes' (labelled clip vectors) or 'captions' (paired items)."""
    return getattr(impl, "task", "classes")


def applies(impl: Any, manifest: Any) -> str | None:
    """Why a trainer cannot learn from this dataset's manifest, or None when it can."""
    if task_of(impl) == "captions":
        if not any(c.group for c in manifest.clips):
            return "it trains on captions paired with images (clips grouped by image); this dataset has none"
        return None
    if not any(c.label is not None for c in manifest.clips):
        return "it trains on class-labelled clips; this dataset has no class labels"
    return None


def pairs_digest(ctx: Any) -> str:
    """Digest of what a captions trainer learns from besides the features: pairing, splits, transcripts."""
    return hash_key([(c.clip_id, ctx.clip_keys[c.clip_id], c.group, c.split, list(c.text)) for c in ctx.manifest.clips])


class _SpeechReader:
    """Log-mel rows of captions by index, `[B, frames, n_mels]`, cropped / zero-padded to `frames`."""

    def __init__(self, store: FeatureStore, clip_ids: list[str], frames: int, preload: dict[str, np.ndarray]) -> None:
        self.store, self.clip_ids, self.frames, self.cache = store, clip_ids, frames, preload

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        dim = int(np.prod(self.store.attrs.get("dims") or [40]))
        out = np.zeros((len(idx), self.frames, dim), dtype=np.float32)
        for k, i in enumerate(idx):
            cid = self.clip_ids[i]
            x = self.cache[cid] if cid in self.cache else self.store[cid][:self.frames]
            out[k, :len(x)] = x.reshape(len(x), dim)[:self.frames]
        return out


class _Pictures:
    """Raw pictures decoded as the visual stage decodes them (uint8 `[3, H, W]`, shorter side resized,
    not cropped), several at a time (ffmpeg runs in threads), kept in memory up to `budget` bytes."""

    def __init__(self, extractor: Any, resize_size: int, budget: int = _PICTURE_BYTES) -> None:
        self.extractor, self.resize_size, self.budget = extractor, resize_size, budget
        self.cache: dict[str, Any] = {}
        self.held = 0

    def _decode(self, clip: Any) -> Any:
        frames = self.extractor.decode_resized(clip, self.resize_size)
        return frames[len(frames) // 2].clone()  # a still picture has one frame; a video, its middle one

    def reader(self, clips: list[Any]) -> Callable[[np.ndarray], list[Any]]:
        """`read(indices)`: the pictures of `clips[i]` for i in indices."""

        def read(idx: np.ndarray) -> list[Any]:
            from concurrent.futures import ThreadPoolExecutor

            want = [clips[int(i)] for i in idx]
            todo = list({c.clip_id: c for c in want if c.clip_id not in self.cache}.values())
            got: dict[str, Any] = {}
            if todo:
                with ThreadPoolExecutor(max_workers=min(len(todo), max(2, os.cpu_count() or 1), 8)) as pool:
                    got = dict(zip((c.clip_id for c in todo), pool.map(self._decode, todo)))
                for cid, img in got.items():
                    if self.held + img.numel() <= self.budget:
                        self.cache[cid] = img
                        self.held += img.numel()
            return [self.cache[c.clip_id] if c.clip_id in self.cache else got[c.clip_id] for c in want]

        return read


def image_cnn(ctx: Any, rk: Any, crop_size: int | None) -> tuple[Any, _Pictures]:
    """The visual stage's CNN, to fine-tune as the image branch, and a reader of the raw pictures
    (at the stage's own input size unless `crop_size` is given)."""
    stage = ctx.stages[rk.views["visual"]]
    return stage_cnn(stage.name, stage.implementation, stage.params, crop_size)


def stage_cnn(name: str, implementation: str, params: dict[str, Any], crop_size: int | None,
              ) -> tuple[Any, _Pictures]:
    """The CNN of a visual stage (its architecture, weights and preprocessing) and a picture reader."""
    from extractors._frames import FrameExtractor
    from models.vase import ImageCNN

    from .registry import EXTRACTORS
    from .train import TrainError

    cls = EXTRACTORS.get(implementation)
    if not (isinstance(cls, type) and issubclass(cls, FrameExtractor)):
        raise TrainError(f"finetune_cnn trains the CNN of the visual stage end to end, and stage '{name}' "
                         f"({implementation}) runs no CNN on pictures; use a CNN stage (vgg16) or drop finetune_cnn")
    ext = cls(cls.Config(**params))
    dims = ext.frame_dims()
    if len(dims) != 1:
        raise TrainError(f"finetune_cnn needs a CNN that gives one vector per picture; stage '{name}' gives "
                         f"{list(dims)} maps (its layer param): use layer fc7")
    try:
        resize, crop = ext.input_size(crop_size)
    except ValueError as e:
        raise TrainError(f"finetune_cnn: {e}") from None
    t = ext.preprocessing
    cnn = ImageCNN(ext.network, int(dims[0]), tuple(t.mean), tuple(t.std), crop, implementation)
    return cnn, _Pictures(ext, resize)


def load_pairs(ctx: Any, rk: Any, frames: int, need_text: bool, pictures: _Pictures | None = None,
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """CaptionData per role (train, val, test) and what was used (splits, counts, left-out clips); with
    `pictures`, each role reads its images' raw pictures too."""
    from models.vase import CaptionData

    from .runner import require_complete
    from .train import TrainError, unusable

    for stage in rk.views.values():
        require_complete(ctx, stage)
    stores = {m: FeatureStore(ctx.stages[s].store_path, clip_keys=ctx.clip_keys) for m, s in rk.views.items()}
    dims = stores["audio"].attrs.get("dims")
    if not dims or len(dims) != 1:
        raise TrainError(f"stage '{rk.views['audio']}' gives rows of {dims}; a captions trainer reads log-mel frames "
                         "[T, n_mels] (the logmel extractor with preset davenet)")
    if pictures is not None and not any("image" in c.media for c in ctx.manifest.clips):
        raise TrainError(f"finetune_cnn trains the CNN on the dataset's raw pictures, and dataset '{ctx.dataset}' has "
                         "none (its clips carry no 'image' media); drop finetune_cnn to train on the stored features")
    skipped: dict[str, str] = {}
    keep = []
    for c in ctx.manifest.clips:
        why = unusable(stores, rk.views, c.clip_id)
        if c.group is None:
            skipped[c.clip_id] = "not paired with an image (no group)"
        elif why:
            skipped[c.clip_id] = why
        elif need_text and not c.text:
            skipped[c.clip_id] = "no transcript (three streams need one)"
        elif pictures is not None and "image" not in c.media:
            skipped[c.clip_id] = "no raw picture (finetune_cnn trains the CNN on the dataset's images)"
        else:
            keep.append(c)
    if skipped:
        log.warning("stage '%s': %d caption(s) left out, e.g. %s: %s", rk.name, len(skipped), *next(iter(skipped.items())))
    by_split: dict[str, list[Any]] = {}
    for c in keep:
        by_split.setdefault(str(c.split).lower(), []).append(c)
    val_name = next((s for s in VAL_SPLITS if s in by_split), None)
    if "train" not in by_split or val_name is None:
        raise TrainError(f"a captions trainer needs a 'train' and a 'val' split (the dataset's published split); "
                         f"dataset '{ctx.dataset}' has {sorted(by_split)} among its usable captions")
    roles = {"train": by_split["train"], "val": by_split[val_name], "test": by_split.get("test", by_split[val_name])}
    speech_bytes = sum(len(r) for r in roles.values()) * frames * int(dims[0]) * 4
    preload: dict[str, np.ndarray] = {}
    if speech_bytes <= _PRELOAD_BYTES:
        preload = {c.clip_id: stores["audio"][c.clip_id][:frames] for r in roles.values() for c in r}
    out = {}
    for role, clips in roles.items():
        groups = list(dict.fromkeys(c.group for c in clips))
        first = {}
        for c in clips:
            first.setdefault(c.group, c.clip_id)
        index = {g: i for i, g in enumerate(groups)}
        ids = [c.clip_id for c in clips]
        by_id = {c.clip_id: c for c in clips}
        out[role] = CaptionData(ids, np.array([index[c.group] for c in clips], dtype=np.int64),
                                stores["visual"].clip_means([first[g] for g in groups]).astype(np.float32),
                                _SpeechReader(stores["audio"], ids, frames, preload),
                                [c.text[0] if c.text else "" for c in clips], groups,
                                pictures.reader([by_id[first[g]] for g in groups]) if pictures else None)
    info = {"splits": {"train": "train", "val": val_name, "test": "test" if "test" in by_split else val_name},
            "captions": {r: len(d) for r, d in out.items()}, "images": {r: len(d.images) for r, d in out.items()},
            "left_out": len(skipped)}
    return out, info


def _atomic_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def plot_history(history: dict[str, list[float]], path: Path, title: str) -> None:
    """Training loss and validation rsum per epoch, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for k in ("loss", "vse_loss", "rec_loss"):
        if k in history:
            ax1.plot(epochs, history[k], label=k)
    ax1.set_xlabel("epoch")
    ax1.set_title("training loss (per batch)")
    ax1.legend(fontsize=8)
    ax2.plot(epochs, history.get("val_rsum", []), marker="o", ms=3)
    ax2.set_xlabel("epoch")
    ax2.set_title("validation rsum (R@1+5+10, both ways)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    from .train import save_figure

    save_figure(fig, path, title, dpi=100)


def _write_embeddings(ctx: Any, rk: Any, data: dict[str, Any], trainer: Any) -> dict[str, np.ndarray]:
    """Embedding stores over every caption of every split (one row each); returns the test embeddings."""
    per_clip: dict[str, dict[str, np.ndarray]] = {}
    test: dict[str, np.ndarray] = {}
    for role in ("train", "val", "test"):
        emb = trainer.encode(data[role])
        if role == "test":
            test = emb
        for view, arr in (("audio", emb["speech"]), ("visual", emb["image"][data[role].image_of]), ("text", emb.get("text"))):
            if arr is None:
                continue
            for cid, row in zip(data[role].clip_ids, arr):
                per_clip.setdefault(view, {})[cid] = row
    from .train import write_embedding_store

    for view, rows in per_clip.items():
        ids = [c.clip_id for c in ctx.manifest.clips if c.clip_id in rows]
        write_embedding_store(ctx, rk, view, ids, np.stack([rows[cid] for cid in ids]), "the best validation epoch",
                              row="caption (visual: its image's)")
    return test


def run_caption_train(ctx: Any, rk: Any, runs: dict[str, Any], device: str = "auto",
                      on_wait: Callable[[str], None] | None = None,
                      on_epoch: Callable[[str, int, int, float], None] | None = None) -> Any:
    """Train (or resume) a captions trainer, select by validation rsum, evaluate the test split."""
    import torch

    from .runner import in_use
    from .train import RunReport, TrainError, _atomic_json, _params_yaml, _run_lock

    t0 = time.perf_counter()
    impl = TRAINERS.get(rk.implementation)
    with _run_lock(ctx, rk, on_wait), contextlib.ExitStack() as held:
        if (rk.run_dir / "metrics.json").exists():
            metrics = json.loads((rk.run_dir / "metrics.json").read_text())
            return RunReport(rk.name, "train", rk.run_dir, True, metrics=metrics, seconds=time.perf_counter() - t0)
        for stage in rk.views.values():
            held.enter_context(in_use(ctx.config.cache, ctx.stages[stage].store_path))
        cfg = impl.Config(**rk.params)
        cnn, pictures = image_cnn(ctx, rk, cfg.crop_size) if getattr(cfg, "finetune_cnn", False) else (None, None)
        data, info = load_pairs(ctx, rk, cfg.max_frames, need_text=cfg.streams == 3, pictures=pictures)
        rk.run_dir.mkdir(parents=True, exist_ok=True)
        init = runs[rk.init_from].run_dir if rk.init_from else None
        (rk.run_dir / "params.yaml").write_text(_params_yaml(ctx, rk, {
            "upstream": {m: {"stage": s, "implementation": ctx.stages[s].implementation,
                             "store": str(ctx.stages[s].store_path),
                             "random_weights": bool(ctx.stages[s].attrs.get("random_weights"))}
                         for m, s in rk.views.items()},
            "init_from": {"stage": rk.init_from, "run": str(init)} if init else None,
            **info, "device": device,
            "finetune_cnn": {"stage": rk.views["visual"], "implementation": cnn.name,
                             "params": ctx.stages[rk.views["visual"]].params, "crop_size": cnn.crop_size,
                             "resize_size": pictures.resize_size,
                             "augment": "random resized crop (scale 0.08-1) + horizontal flip"} if cnn else None}))
        trainer = impl(cfg, device, cnn=cnn) if cnn else impl(cfg, device)
        ckpt_path = rk.run_dir / "checkpoint.pt"
        resumed_at = 0
        if ckpt_path.exists():
            trainer.resume(torch.load(ckpt_path, map_location="cpu", weights_only=True))
            resumed_at = trainer.epoch + 1
            log.info("stage '%s': resuming after epoch %d of %d", rk.name, resumed_at, cfg.epochs)
        elif init is not None:
            if not (init / "model.pt").exists():
                raise TrainError(f"stage '{rk.init_from}' has not completed ({init}); run it first")
            state = torch.load(init / "model.pt", map_location="cpu", weights_only=True)
            trainer.build(data["train"].images.shape[1], state.get("vocab", []))
            try:
                trainer.init_from(state)
            except (ValueError, RuntimeError) as e:
                raise TrainError(f"cannot start from stage '{rk.init_from}': {e}") from None

        def checkpoint(tr: Any, improved: bool) -> None:
            if improved:
                _atomic_save(tr.state_dict(), rk.run_dir / "model_best.pt")
            _atomic_save(tr.checkpoint(), ckpt_path)  # after model_best: a resume never lacks the best so far
            _atomic_json(rk.run_dir / "history.json", tr.history)
            if on_epoch:
                on_epoch(rk.name, tr.epoch + 1, cfg.epochs, tr.history["val_rsum"][-1])

        try:
            trainer.fit_pairs(data["train"], data["val"], on_epoch=checkpoint)
        except ValueError as e:
            raise TrainError(str(e)) from None
        _atomic_save(trainer.state_dict(), rk.run_dir / "model.pt")
        plot_history(trainer.history, rk.run_dir / "training_curve.png", f"{rk.name} on {ctx.dataset}")
        test = _write_embeddings(ctx, rk, data, trainer)
        t = data["test"]
        np.savez(rk.run_dir / "test_embeddings.npz", clip_ids=np.array(t.clip_ids, dtype=str),
                 groups=np.array(t.groups, dtype=str), image_of=t.image_of,
                 **{k: v.astype(np.float32) for k, v in test.items()})
        from models.metrics import caption_recall

        metrics = caption_recall(test, t.image_of, folds=cfg.eval_folds)
        metrics.update({"stage": rk.name, "implementation": rk.implementation, "dataset": ctx.dataset,
                        "key": rk.key, "task": "captions", "evaluated_on": info["splits"]["test"],
                        "best_epoch": trainer.best_epoch + 1, "epochs": cfg.epochs, "best_val_rsum": trainer.best_rsum,
                        "resumed_at_epoch": resumed_at, "completed": time.time()})
        _atomic_json(rk.run_dir / "metrics.json", metrics)  # last: marks the run complete
    return RunReport(rk.name, "train", rk.run_dir, False, metrics=metrics, seconds=time.perf_counter() - t0)



def chance_rsum(m: dict[str, Any]) -> float:
    """The rsum (R@1+5+10, image <-> speech) a random ranking gets, from a captions run's metrics."""
    return float(sum(v for d in ("image2speech", "speech2image") for v in m["chance"][d].values()))


def _cell(m: dict[str, Any], d: str) -> str:
    return f"{m[d]['r@1']:5.1f} {m[d]['r@5']:5.1f} {m[d]['r@10']:5.1f} {m[d]['medr']:5.0f}"


def recall_line(m: dict[str, Any]) -> str:
    """'image->speech R@1/5/10 ..., speech->image ..., rsum ... (chance ...)' for one captions run."""
    chance = chance_rsum(m)
    parts = [f"{d.replace('2', '->')} R@1/5/10 {m[d]['r@1']:.1f}/{m[d]['r@5']:.1f}/{m[d]['r@10']:.1f}, "
             f"medr {m[d]['medr']:.0f}" for d in ("image2speech", "speech2image")]
    return (f"{'; '.join(parts)}; rsum {m['rsum']:.1f} (chance {chance:.1f}) on {m['n_images']} "
            f"{m.get('evaluated_on', 'test')} images")


def recall_table(runs: dict[str, dict[str, Any]]) -> str:
    """A plain-text Recall@K table (R@1 R@5 R@10 medr each way, rsum, chance rsum) of captions runs."""
    head = (f"{'stage':<18} {'image -> speech':>23}   {'speech -> image':>23} {'rsum':>7} {'chance':>7} {'images':>6}\n"
            f"{'':<18} {'R@1   R@5  R@10  medr':>23}   {'R@1   R@5  R@10  medr':>23}")
    lines = [head, "-" * len(head.splitlines()[0])]
    for name, m in runs.items():
        chance = chance_rsum(m)
        lines.append(f"{name:<18} {_cell(m, 'image2speech'):>23}   {_cell(m, 'speech2image'):>23} "
                     f"{m['rsum']:7.1f} {chance:7.1f} {m['n_images']:>6}")
    return "\n".join(lines)
