"""Ignite handlers that bundle configs attach to MONAI engines."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import ValidationHandler as MonaiValidationHandler

from common.distributed import is_rank0
from common.evaluation import DatasetMetric, summarise, write_evaluation

logger = logging.getLogger(__name__)


class EvaluationWriter:
    """Collect one row per case while an evaluator runs, then write ``metrics.json`` and ``metrics_per_case.csv``.

    ``case_rows(engine)`` is called at every iteration and returns the rows of that batch (one dict per case, with a
    ``case`` column and the per-case metric values). At the end of the epoch the rows are summarised with bootstrap
    CIs (:func:`common.evaluation.summarise`), both files are written atomically, and the scalar summary is put into
    ``engine.state.metrics`` (CI bounds as ``<name>_ci95_low``/``_high``) so experiment trackers log it. Attach it
    before any tracking handler (MONAI's ``--tracking`` switch appends its handler last). ``extra()``, when given,
    returns further entries for ``metrics.json`` (e.g. breast's ``num_skipped_rows``), called at the end of the epoch;
    a list of such callables adds the entries of each.
    """

    def __init__(
        self,
        output_dir: str | Path,
        key_metric: str,
        case_rows: Callable[[Engine], Sequence[Mapping[str, Any]]],
        case_metrics: Sequence[str] = (),
        dataset_metrics: Mapping[str, DatasetMetric] | None = None,
        n_resamples: int = 1000,
        seed: int = 0,
        extra: Callable[[], Mapping[str, Any]] | Sequence[Callable[[], Mapping[str, Any]]] | None = None,
    ) -> None:
        self.output_dir = Path(str(output_dir))
        self.key_metric = key_metric
        self.case_rows = case_rows
        self.case_metrics = list(case_metrics)
        self.dataset_metrics = dict(dataset_metrics or {})
        self.n_resamples = int(n_resamples)
        self.seed = int(seed)
        self.extra = [] if extra is None else list(extra) if isinstance(extra, (list, tuple)) else [extra]
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _collect(self, engine: Engine) -> None:
        self.rows.extend(dict(r) for r in self.case_rows(engine))

    def _write(self, engine: Engine) -> None:
        self.summary = summarise(self.rows, self.key_metric, self.case_metrics, self.dataset_metrics,
                                 n_resamples=self.n_resamples, seed=self.seed)
        for extra in self.extra:
            self.summary.update(extra())
        if is_rank0():
            metrics_path, _ = write_evaluation(self.output_dir, self.rows, self.summary)
            logger.info("evaluation of %d cases: %s = %s (95%% CI %s); written to %s", len(self.rows),
                        self.key_metric, self.summary[self.key_metric], self.summary[f"{self.key_metric}_ci95"],
                        metrics_path)
        engine.state.metrics.update(scalar_metrics(self.summary))


def scalar_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics.json summary, CI bounds split into ``_ci95_low``/``_ci95_high``."""
    out: dict[str, float] = {}
    for name, value in summary.items():
        if name.endswith("_ci95") and isinstance(value, (list, tuple)) and len(value) == 2:
            out[f"{name}_low"], out[f"{name}_high"] = float(value[0]), float(value[1])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class ValidationHandler(MonaiValidationHandler):
    """MONAI's ``ValidationHandler`` that also validates after the last epoch (or iteration) of training.

    MONAI's handler runs the validator every ``interval`` epochs only, so ``--epochs`` below ``val_interval`` (or not a
    multiple of it) ends training without a last validation, and without one no best model (``models/model.pt``) is
    ever written. Here the validator runs at every multiple of ``interval`` *and* at ``max_epochs`` (for
    ``epoch_level=False``: every ``interval`` iterations and at the last iteration), once per event, on every rank.

    Raises:
        ValueError: ``interval`` is not a positive integer (the message names ``val_interval``).
    """

    def __init__(self, interval: int, validator: Any = None, epoch_level: bool = True,
                 exec_at_start: bool = False) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"val_interval must be a positive whole number of epochs, got {interval!r}.")
        super().__init__(interval=interval, validator=validator, epoch_level=epoch_level, exec_at_start=exec_at_start)

    def attach(self, engine: Engine) -> None:
        if self.epoch_level:
            engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._epoch_due), self)
        else:
            engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self._iteration_due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)

    def _epoch_due(self, engine: Engine, epoch: int) -> bool:
        return epoch % self.interval == 0 or epoch == engine.state.max_epochs

    def _iteration_due(self, engine: Engine, iteration: int) -> bool:
        if iteration % self.interval == 0:
            return True
        length, max_epochs = engine.state.epoch_length, engine.state.max_epochs
        return length is not None and max_epochs is not None and iteration == length * max_epochs
