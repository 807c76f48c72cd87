"""Methods, one folder each (`tnn_ccca`, `vase`, `vgs`, `dsve`, `shr`, `zero_shot`): its trainers, networks, scoring, its task
when it brings one, its figures and report section; `common` holds what they share (items and views, the epoch
loop, losses, metrics, text, SRU, pictures). Importing a method's folder registers it."""
from . import (  # noqa: F401  (registers trainers, evaluators and tasks)
    common,
    dsve,
    shr,
    tnn_ccca,
    vase,
    vgs,
    zero_shot,
)
