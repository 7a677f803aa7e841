"""Ignite handler writing prediction overlays (image | ground truth | prediction) for the first cases of an epoch."""

from __future__ import annotations

import logging
from pathlib import Path

from ignite.engine import Engine, Events

from common.distributed import is_rank0
from common.overlays import save_overlay_png

logger = logging.getLogger(__name__)


class VesselOverlays:
    """Write ``<output_dir>/<case>_overlay.png`` for the first ``max_cases`` images of every evaluator epoch.

    Reads the decollated ``engine.state.batch`` (``image``, ``case``) and ``engine.state.output`` (``pred``,
    ``label``); ``common.tracking.MLflowRunRecorder(overlay_dir=...)`` uploads them when tracking is on.
    """

    def __init__(self, output_dir: str, max_cases: int = 3) -> None:
        if int(max_cases) < 0:
            raise ValueError(f"max_cases must be >= 0, got {max_cases}.")
        self.output_dir = Path(str(output_dir))
        self.max_cases = int(max_cases)
        self.written = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self.written = 0

    def __call__(self, engine: Engine) -> None:
        if not is_rank0():
            return
        for b, o in zip(engine.state.batch, engine.state.output):
            if self.written >= self.max_cases:
                return
            case = str(b.get("case", self.written))
            save_overlay_png(b["image"], o.get("label"), o["pred"], self.output_dir / f"{case}_overlay.png",
                             title=f"{case}: vessels inside the FOV", class_names={1: "vessel"})
            self.written += 1
