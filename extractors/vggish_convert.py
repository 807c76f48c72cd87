"""Convert the TF VGGish variables (a checkpoint such as vggish_model.ckpt, or a SavedModel such as the
TF-Hub model) and the PCA params (vggish_pca_params.npz) into a torch state dict for `vggish`."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .weights import WeightsError

# TF scope (after the leading `vggish/`) -> torch module prefix
_LAYERS = {
    "conv1": "features.0", "conv2": "features.3",
    "conv3/conv3_1": "features.6", "conv3/conv3_2": "features.8",
    "conv4/conv4_1": "features.11", "conv4/conv4_2": "features.13",
    "fc1/fc1_1": "embeddings.0", "fc1/fc1_2": "embeddings.2", "fc2": "embeddings.4",
}


def read_tf_variables(source: str | Path) -> dict[str, np.ndarray]:
    """Variable name (without `:0`) -> array, from a SavedModel directory or a checkpoint prefix."""
    import tensorflow as tf

    source = Path(source)
    if (source / "saved_model.pb").exists():
        loaded = tf.saved_model.load(str(source))
        # TF1 hub modules expose `.variables`; a TF2 module does not, so walk its object graph
        found = [o for o in tf.train.TrackableView(loaded).descendants() if isinstance(o, tf.Variable)]
        return {v.name.split(":")[0]: v.numpy() for v in found}
    try:
        reader = tf.train.load_checkpoint(str(source))
    except Exception as e:
        raise WeightsError(f"{source} is neither a SavedModel directory nor a TF checkpoint ({e})") from None
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def tf_to_torch(variables: dict[str, np.ndarray]) -> dict[str, Any]:
    """Map `.../vggish/<layer>/{weights,biases}` to the torch VGGish state dict (conv HWIO -> OIHW)."""
    import torch

    state: dict[str, Any] = {}
    for name, value in variables.items():
        m = re.search(r"(?:^|/)vggish/(.+)/(weights|biases)$", name)
        if not m or m.group(1) not in _LAYERS:
            continue
        prefix, kind = _LAYERS[m.group(1)], m.group(2)
        arr = np.asarray(value, np.float32)
        if kind == "weights":
            arr = arr.transpose(3, 2, 0, 1) if arr.ndim == 4 else arr.T
        state[f"{prefix}.{'weight' if kind == 'weights' else 'bias'}"] = torch.from_numpy(np.ascontiguousarray(arr))
    missing = sorted(f"{p}.{k}" for p in _LAYERS.values() for k in ("weight", "bias") if f"{p}.{k}" not in state)
    if missing:
        raise WeightsError(f"the TF variables lack VGGish layers {missing[:4]}...; found {sorted(variables)[:6]}")
    return state


def convert(source: str | Path, out: str | Path, pca: str | Path | None = None) -> Path:
    """Write a torch state dict (plus `pca_eigen_vectors` / `pca_means` when `pca` is given) to `out`."""
    import torch

    state = tf_to_torch(read_tf_variables(source))
    if pca is not None:
        with np.load(pca) as z:
            state["pca_eigen_vectors"] = torch.from_numpy(np.asarray(z["pca_eigen_vectors"], np.float64))
            state["pca_means"] = torch.from_numpy(np.asarray(z["pca_means"], np.float64).reshape(-1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out
