"""The inference entry every bundle shares: a MONAI evaluator over the cases listed from ``--input_dir``.

Each bundle's ``inference.json`` has the Model Zoo's form (``dataset``, ``dataloader``, ``inferer``,
``postprocessing``, ``handlers``, ``evaluator``, ``run: ["$@evaluator.run()"]``), so MONAI's own property check
(``ConfigWorkflow(..., workflow_type="infer").check_properties()``) passes, and keeps the collection's promises:

- :class:`InputCases` is a MONAI ``Dataset`` over what the bundle's ``list_inputs`` found in ``--input_dir``
  (:func:`common.inputs.list_input_folder`: nothing skipped without a word); the bundle's ``case_items`` turns each
  input into one or more items (checking it up front), and ``transform`` is the bundle's ``preprocessing``. An input
  that fails either step becomes a *failure item* instead of stopping the run.
- :class:`InferenceEvaluator` is MONAI's ``SupervisedEvaluator`` that loads the checkpoint before anything runs
  (:func:`common.checkpoint.load_network_weights`: a missing or unfitting checkpoint is a clear error, never a
  prediction from random weights), records a failure item, or an error in the forward pass or the postprocessing of
  one case, and goes on with the next case; after the last case it raises
  :class:`common.validation.BatchFailure` naming every failed input (non-zero exit, the reason as the last line), as
  :func:`common.validation.run_each` does for code outside an engine.
- :class:`CaseWriter` is the handler that writes each case's outputs through the bundle's ``write`` function
  (atomic writers of :mod:`common.io`; an error there fails only that case) and, at completion, hands the rows
  ``write`` returned to the bundle's ``finish`` function (e.g. ``predictions.csv``, ``clinical.csv``).

One case per iteration (``batch_size`` 1) where inputs differ in size. Every item carries :data:`SOURCE`, the name of
the input (file or folder) that errors report. Where an input is many same-sized items (pathology: the patches of a
PCam file or of a slide's tissue grid), ``InputCases(grouped=True)`` numbers each input's items (:data:`PART` of
:data:`PARTS`), the dataloader batches them with :func:`collate_cases` (a failure item does not spoil its batch), and
``CaseWriter(finish_input=...)`` collects what ``write`` returned for each item of one input and hands it to
``finish_input`` when the input's last item is done (an input with any failed item is reported once, by name, and
writes nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import Dataset
from monai.engines import SupervisedEvaluator

from common.checkpoint import load_network_weights
from common.errors import describe
from common.validation import BatchFailure

logger = logging.getLogger(__name__)

#: item key: the input (file or folder, with the case) that a failure report names
SOURCE = "source"
#: item key of a failure item: why the input could not be read or checked (one line)
FAILURE = "inference_failure"
#: batch key (:func:`collate_cases`): ``[(source, reason), ...]`` of the failure items left out of the batch
FAILED = "inference_failed"
#: item keys of ``InputCases(grouped=True)``: the item's index among its input's items, and how many there are
PART, PARTS = "part", "parts"


def source_name(element: Any) -> str:
    """How an input is named in errors: a path as given; a dict by its ``case`` and ``image`` (or ``full``) path."""
    if isinstance(element, dict):
        path = element.get("image", element.get("full"))
        case = element.get("case")
        return f"{case} ({path})" if case is not None and path is not None else str(case if path is None else path)
    return str(element)


class InputCases(Dataset):
    """A MONAI ``Dataset`` over the inputs of an inference folder, in which one bad input is a failure item.

    Args:
        data: the inputs, as the bundle's ``list_inputs(input_dir)`` returns them (paths or dicts), in order.
        transform: the bundle's ``preprocessing`` (dict transforms), applied when an item is loaded.
        case_items: maps one input to its item dict (or a list of item dicts, e.g. cardiac's ED and ES volumes),
            checking it; called for every input here, up front. ``None``: the inputs are the items (dicts).
        name_of: names an input in errors (default :func:`source_name`).
        grouped: add :data:`PART` and :data:`PARTS` to every item (its index among the items of its input, and their
            number), for ``CaseWriter(finish_input=...)``; an input may then have no item at all.

    An input whose ``case_items`` raises, or an item whose ``transform`` raises, is returned as
    ``{SOURCE: name, FAILURE: "<Type>: <message>"}`` (:func:`common.errors.describe`, one line), which
    :class:`InferenceEvaluator` reports and skips.
    """

    def __init__(self, data: Sequence[Any], transform: Callable | None = None,
                 case_items: Callable[[Any], dict | list[dict]] | None = None,
                 name_of: Callable[[Any], str] = source_name, grouped: bool = False) -> None:
        items: list[dict[str, Any]] = []
        #: every input's name, in order (also those that failed or have no item)
        self.sources: list[str] = []
        self.grouped = bool(grouped)
        for element in data:
            name = name_of(element)
            self.sources.append(name)
            try:
                made = case_items(element) if case_items is not None else element
            except Exception as e:  # noqa: BLE001 - reported by name at the end of the run (InferenceEvaluator)
                items.append({SOURCE: name, FAILURE: describe(e, one_line=True)})
                continue
            made = made if isinstance(made, list) else [made]
            for part, item in enumerate(made):
                items.append({**item, SOURCE: item.get(SOURCE, name), **({PART: part, PARTS: len(made)}
                                                                          if grouped else {})})
        super().__init__(data=items, transform=transform)

    def _transform(self, index: int) -> Any:
        item = self.data[index]
        if FAILURE in item:
            return dict(item)
        try:
            return super()._transform(index)
        except Exception as e:  # noqa: BLE001 - one unreadable input must not stop the others
            return {SOURCE: item[SOURCE], FAILURE: describe(e, one_line=True)}


def collate_cases(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``collate_fn`` for batches of many items: MONAI's ``list_data_collate`` of the good items, and the failure items
    (:class:`InputCases`) as ``batch[FAILED] = [(source, reason), ...]`` (a batch of failures only has just that key),
    so that one unreadable item does not stop a batch; :class:`InferenceEvaluator` reports them."""
    from monai.data import list_data_collate

    failed = [(str(item[SOURCE]), str(item[FAILURE])) for item in batch if FAILURE in item]
    good = [item for item in batch if FAILURE not in item]
    collated = list_data_collate(good) if good else {}
    if failed:
        collated[FAILED] = failed
    return collated


class InferenceEvaluator(SupervisedEvaluator):
    """MONAI's ``SupervisedEvaluator`` for inference over :class:`InputCases`: checkpoint first, bad cases reported.

    Args:
        device, val_data_loader, network, inferer, postprocessing, val_handlers, amp: as ``SupervisedEvaluator``
            (``decollate`` is on: ``postprocessing`` and the handlers see one case at a time).
        ckpt_path: the weights, loaded into ``network`` here, before any input is read.
        what: names the job in the final error, e.g. ``"brain inference"``.
        kwargs: further ``SupervisedEvaluator`` arguments.

    Raises:
        common.checkpoint.CheckpointError: ``ckpt_path`` is missing, damaged or does not fit ``network``.
        common.validation.BatchFailure: from :meth:`run`, after every good case was processed, naming every input
            that failed (as a failure item, in the forward pass, in ``postprocessing`` or in a :class:`CaseWriter`).
    """

    def __init__(self, device: torch.device | str, val_data_loader: Any, network: torch.nn.Module, inferer: Any,
                 ckpt_path: str, postprocessing: Callable | None = None, val_handlers: Sequence | None = None,
                 what: str = "inference", amp: bool = False, **kwargs: Any) -> None:
        load_network_weights(network, str(ckpt_path))
        super().__init__(device=torch.device(device), val_data_loader=val_data_loader, network=network,
                         inferer=inferer, postprocessing=postprocessing, val_handlers=val_handlers, amp=amp,
                         decollate=True, **kwargs)
        self.what = what
        self.failures: list[tuple[str, str]] = []
        #: the inputs are grouped (``InputCases(grouped=True)``): failures and the count of inputs are per input
        self.grouped = bool(getattr(getattr(val_data_loader, "dataset", None), "grouped", False))

    def case_failed(self, name: str, error: BaseException | str) -> None:
        """Record that input ``name`` failed (logged now, raised together at the end of :meth:`run`); over a grouped
        :class:`InputCases`, an input that already failed is not recorded again (several items of one input)."""
        if self.grouped and self.failed(name):
            return
        reason = error if isinstance(error, str) else describe(error, one_line=True)
        logger.error("%s failed for %s: %s", self.what, name, reason)
        self.failures.append((str(name), reason))

    def failed(self, name: str) -> bool:
        """Whether input ``name`` has failed in this run."""
        return any(n == str(name) for n, _ in self.failures)

    def _iteration(self, engine: Any, batchdata: dict[str, Any]) -> Any:
        for name, reason in batchdata.pop(FAILED, []) if isinstance(batchdata, dict) else []:
            self.case_failed(name, reason)
        if isinstance(batchdata, dict) and not batchdata:
            return []
        names = [str(n) for n in batchdata.get(SOURCE, ["(unnamed input)"])]
        if FAILURE in batchdata:
            for name, reason in zip(names, batchdata[FAILURE]):
                self.case_failed(name, str(reason))
            return []
        try:
            return super()._iteration(engine, batchdata)
        except Exception as e:  # noqa: BLE001 - reported by name at the end of the run
            for name in names:
                self.case_failed(name, e)
            return []

    def run(self, global_epoch: int = 1) -> None:  # type: ignore[override]
        """Predict every case; then raise :class:`common.validation.BatchFailure` if any failed."""
        self.failures = []
        super().run(global_epoch)
        if self.failures:
            dataset = getattr(self.data_loader, "dataset", ())
            total = len(dataset.sources if self.grouped else dataset) or len(self.failures)
            raise BatchFailure(self.what, self.failures, done=max(total - len(self.failures), 0))


class CaseWriter:
    """Handler: write each case's outputs as it completes, and the collected rows at the end of the run.

    Args:
        write: called with one case (its batch and output entries in one dict: the bundle's keys, ``pred`` after
            ``postprocessing``, :data:`SOURCE`); writes that case's files (atomically, :mod:`common.io`) and returns
            a table row (dict), a list of rows, or ``None``. An error fails only this case (reported by the
            :class:`InferenceEvaluator`, other engines re-raise it).
        finish: called once at completion with every row returned so far, when there is at least one (e.g. writes
            ``predictions.csv``); its error ends the run.
        finish_input: for items of ``InputCases(grouped=True)``: what ``write`` returned for each item is kept per
            input (:data:`SOURCE`) and, when the input's last item (:data:`PARTS`) is written, passed (in item
            order) to ``finish_input``, which writes the input's files and returns its rows. An input with a failed
            item gets no ``finish_input`` (its kept results are dropped) and is reported once; an error in
            ``finish_input`` fails that input.
    """

    def __init__(self, write: Callable[[dict[str, Any]], Any],
                 finish: Callable[[list[dict[str, Any]]], Any] | None = None,
                 finish_input: Callable[[list[Any]], Any] | None = None) -> None:
        self.write = write
        self.finish = finish
        self.finish_input = finish_input
        self.rows: list[dict[str, Any]] = []
        self.parts: dict[str, list[Any]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write)
        engine.add_event_handler(Events.COMPLETED, self._finish)

    def _reset(self, engine: Engine) -> None:
        self.rows = []
        self.parts = {}

    @staticmethod
    def _failed(engine: Engine, source: str) -> bool:
        return bool(getattr(engine, "failed", lambda _: False)(source))

    def _write(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(output, list) and output:  # else a failed batch (already recorded) or nothing to write
            for entry, result in zip(batch, output):
                self._write_one(engine, {**entry, **result})
        for source in [s for s in self.parts if self._failed(engine, s)]:
            del self.parts[source]  # a failed input: what its other items gave is not needed

    def _write_one(self, engine: Engine, case: dict[str, Any]) -> None:
        source = str(case.get(SOURCE, "(unnamed input)"))
        if self.finish_input is not None and self._failed(engine, source):
            return
        try:
            row = self.write(case)
            if self.finish_input is not None:
                parts = self.parts.setdefault(source, [])
                parts.append(row)
                row = None
                if len(parts) == int(case[PARTS]):
                    row = self.finish_input(self.parts.pop(source))
        except Exception as e:
            if not hasattr(engine, "case_failed"):
                raise
            engine.case_failed(source, e)
            return
        if row is not None:
            self.rows.extend(row if isinstance(row, list) else [row])

    def _finish(self, engine: Engine) -> None:
        for source, parts in self.parts.items():  # cannot happen unless items were lost: never silently
            reason = f"only {len(parts)} of its items were predicted"
            if not hasattr(engine, "case_failed"):
                raise RuntimeError(f"{source}: {reason}")
            engine.case_failed(source, reason)
        self.parts = {}
        if self.finish is not None and self.rows:
            self.finish(list(self.rows))


def output_path(output_dir: str | Path, name: str) -> Path:
    """``<output_dir>/predictions/<name>``, the folder of every per-case output (DESIGN.md)."""
    return Path(str(output_dir)) / "predictions" / name
