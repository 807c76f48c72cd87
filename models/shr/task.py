"""The `modalities` task of See, Hear, and Read: items with up to three modalities, scored between every two."""
from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.common.tasks import Pairs
from pipeline.registry import register_task
from pipeline.training.base import TrainError
from pipeline.training.sections import Row, Section, chart, details, label

from . import figures

if TYPE_CHECKING:
    from models.common.items import Items

MATRIX_ORDER = ("image2text", "text2image", "image2sound", "sound2image", "text2sound", "sound2text")


class MatrixSection(Section):
    """Runs scored between every two modalities: median rank per query x target, chance beside, and each run's
    matrix picture."""

    order, text_order = 2, 3

    def accepts(self, row: Row) -> bool:
        return "matrix" in row["metrics"]

    def text(self, rows: list[Row]) -> list[str]:
        return [figures.matrix_table({f"{r['dataset']} / {label(rows, r)}": r["metrics"] for r in rows})]

    def html(self, rows: list[Row]) -> str:
        e = html.escape
        body, pictures = [], []
        for r in rows:
            m = r["metrics"]
            cells = "".join(f"<td class='num'>{m['matrix'][d]['medr']:.0f} <span class='rand'>("
                            f"{m['chance'][d]['medr']:.0f})</span><br>{m['matrix'][d]['r@10']:.0f}%</td>"
                            if d in m["matrix"] else "<td></td>" for d in MATRIX_ORDER)
            name = label(rows, r)
            body.append(f"<tr><td>{e(r['dataset'])}</td><td>{e(name)}</td><td class='wrap'>{e(r['features'])}</td>"
                        f"{cells}<td class='num'>{m['n_items']} / {m['n_images']}</td><td>{details(r)}</td></tr>")
            if Path(r["plot"]).exists():
                pictures.append(f"<h3>{e(r['dataset'])} / {e(name)}</h3>" + chart(Path(r["plot"])))
        heads = "".join(f"<th>{d.replace('2', '&rarr;')}</th>" for d in MATRIX_ORDER)
        return ("<h2>Image, sound and text: retrieval between every two</h2><p>Median rank of the right answer "
                "(chance in brackets) and R@10, query &rarr; target, on the test split. See, Hear, and Read never "
                "trains text &harr; sound: it comes through the images.</p><table><tr><th>dataset</th><th>stage</th><th>features</th>"
                + heads + "<th>items / images</th><th></th></tr>" + "".join(body) + "</table>" + "".join(pictures))


@register_task
class Modalities(Pairs):
    """Items with up to three modalities (an image per group, a sound and a text per item), the published split;
    retrieval between every two of them (See, Hear, and Read): R@K and median rank per query x target modality."""

    name = "modalities"
    plot_file, plot_label = "modality_matrix.png", "median rank, query x target modality"
    modalities = ("image", "sound", "text")
    sections = (MatrixSection,)

    def extra_arrays(self, test: "Items") -> dict[str, np.ndarray]:
        """Which items have each optional modality (a mixed corpus: captions without sound, videos without text)."""
        return {f"present_{k}": v for k, v in test.present.items()}

    def metrics(self, run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
        from models.common.metrics import modality_matrix

        ks, folds, emb, image_of, present = self.scoring_inputs(run_dir, params)
        try:
            out = modality_matrix(emb, image_of, ks, folds, present)
        except ValueError as e:
            raise TrainError(f"{run_dir}: {e}") from None
        trained = [d for d in ("image2text", "text2image", "image2sound", "sound2image") if d in out["matrix"]]
        out["rsum"] = float(sum(out["matrix"][d][f"r@{k}"] for d in trained for k in ks))
        out["chance_rsum"] = float(sum(out["chance"][d][f"r@{k}"] for d in trained for k in ks))
        return out

    def plot(self, runs: dict[str, tuple[Path, dict[str, Any]]], path: Path, title: str) -> Path:
        figures.plot_modality_matrix({name: m for name, (_, m) in runs.items()}, path / self.plot_file, title)
        return path / self.plot_file

    def line(self, metrics: dict[str, Any]) -> str:
        return figures.matrix_line(metrics)

    def table(self, runs: dict[str, dict[str, Any]]) -> str:
        return figures.matrix_table(runs)
