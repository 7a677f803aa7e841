"""common.handlers.ValidationHandler: validation at every interval and always at the last epoch."""

from __future__ import annotations

import pytest
from ignite.engine import Engine

from common.handlers import ValidationHandler


class _Validator:
    """Records the trainer epochs it is run at (stands in for a MONAI Evaluator)."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def run(self, global_epoch: int) -> None:
        self.epochs.append(global_epoch)


def _validated_epochs(max_epochs: int, interval: int, epoch_length: int = 2, epoch_level: bool = True) -> list[int]:
    validator = _Validator()
    handler = ValidationHandler(interval=interval, epoch_level=epoch_level)
    handler.validator = validator  # MONAI's type check wants an Evaluator; the schedule is what is tested here
    trainer = Engine(lambda engine, batch: None)
    handler.attach(trainer)
    trainer.run(range(epoch_length), max_epochs=max_epochs)
    return validator.epochs


@pytest.mark.parametrize("max_epochs, interval, expected", [
    (1, 5, [1]),            # --epochs below val_interval: MONAI's handler never validates
    (7, 3, [3, 6, 7]),      # not a multiple: the last epoch is added
    (6, 3, [3, 6]),         # a multiple: no second validation at the end
    (3, 1, [1, 2, 3]),
])
def test_epoch_schedule(max_epochs, interval, expected):
    assert _validated_epochs(max_epochs, interval) == expected


def test_iteration_level_validates_after_the_last_iteration():
    # 3 epochs x 2 iterations = iterations 1..6; every 4 -> 4, and the last (6); the validator gets the epoch
    assert _validated_epochs(3, 4, epoch_length=2, epoch_level=False) == [2, 3]


@pytest.mark.parametrize("interval", [0, -1, 1.5, True])
def test_interval_must_be_a_positive_int(interval):
    with pytest.raises(ValueError, match="val_interval must be a positive whole number"):
        ValidationHandler(interval=interval)


def test_monai_handler_really_skips_the_last_epoch():
    """The premise, pinned: MONAI's own handler does not validate at epoch 1 of 1 with interval 5."""
    from monai.handlers import ValidationHandler as MonaiValidationHandler

    validator = _Validator()
    handler = MonaiValidationHandler(interval=5)
    handler.validator = validator
    trainer = Engine(lambda engine, batch: None)
    handler.attach(trainer)
    trainer.run(range(2), max_epochs=1)
    assert validator.epochs == []


def test_evaluation_writer_takes_a_list_of_extra_callables(tmp_path):
    from ignite.engine import Engine

    from common.handlers import EvaluationWriter

    writer = EvaluationWriter(tmp_path, "score", lambda e: [{"case": "a", "score": 1.0}], case_metrics=["score"],
                              n_resamples=10, extra=[lambda: {"threshold": 0.3}, lambda: {"num_skipped_rows": 2}])
    engine = Engine(lambda e, b: None)
    writer.attach(engine)
    engine.run([0], max_epochs=1)
    import json

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["threshold"] == 0.3 and metrics["num_skipped_rows"] == 2 and metrics["score"] == 1.0
