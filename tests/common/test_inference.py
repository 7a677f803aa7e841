"""common.inference: the evaluator form of every inference.json keeps going past a bad input and names it at the end."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader
from monai.inferers import SimpleInferer

from common.checkpoint import CheckpointError
from common.inference import FAILURE, SOURCE, CaseWriter, InferenceEvaluator, InputCases
from common.validation import BatchFailure


def _items(value: str) -> dict:
    if value == "unlisted":
        raise ValueError(f"{value}: Info.cfg is missing")
    return {"case": value, "image": value}


def _load(item: dict) -> dict:
    if item["image"] == "unreadable":
        raise OSError(f"{item['image']}: not a readable file")
    return {**item, "image": torch.full((1, 2, 2), float(len(item["image"])))}


def _parts(tmp_path, inputs):
    network = torch.nn.Conv2d(1, 1, 1, bias=False)
    torch.nn.init.constant_(network.weight, 2.0)  # pred = 2 x image
    ckpt = tmp_path / "model.pt"
    torch.save(network.state_dict(), ckpt)
    torch.nn.init.constant_(network.weight, 0.0)  # the evaluator must load the checkpoint
    dataset = InputCases(inputs, transform=_load, case_items=_items)
    return network, ckpt, DataLoader(dataset, batch_size=1)


def test_input_cases_turn_bad_inputs_into_failure_items(tmp_path):
    dataset = InputCases(["ok", "unlisted", "unreadable"], transform=_load, case_items=_items)
    assert len(dataset) == 3
    assert dataset[0]["image"].sum().item() == 8.0 and dataset[0][SOURCE] == "ok"
    assert dataset[1] == {SOURCE: "unlisted", FAILURE: "ValueError: unlisted: Info.cfg is missing"}
    assert dataset[2] == {SOURCE: "unreadable", FAILURE: "OSError: unreadable: not a readable file"}


def test_evaluator_loads_the_checkpoint_writes_good_cases_and_names_every_bad_one(tmp_path):
    network, ckpt, loader = _parts(tmp_path, ["ok", "unlisted", "unreadable", "unwritable", "fine"])
    written, finished = [], []

    def write(case):
        if case["case"] == "unwritable":
            raise PermissionError(f"{case['case']}: read-only folder")
        written.append((case["case"], case["pred"].sum().item()))
        return {"case": case["case"]}

    writer = CaseWriter(write, finish=finished.append)
    evaluator = InferenceEvaluator("cpu", loader, network, SimpleInferer(), str(ckpt), val_handlers=[writer],
                                   what="toy inference")
    with pytest.raises(BatchFailure) as info:
        evaluator.run()
    # pred = 2 x image: "ok" -> 4 pixels x 2 x 2 = 16; "fine" -> 4 x 2 x 4 = 32 (weights from the checkpoint, not 0)
    assert written == [("ok", 16.0), ("fine", 32.0)]
    assert finished == [[{"case": "ok"}, {"case": "fine"}]], "the table is written once, with the good rows"
    assert info.value.failures == [("unlisted", "ValueError: unlisted: Info.cfg is missing"),
                                   ("unreadable", "OSError: unreadable: not a readable file"),
                                   ("unwritable", "PermissionError: unwritable: read-only folder")]
    assert str(info.value).startswith("toy inference: 3 input(s) failed (2 processed)")
    assert str(info.value).splitlines()[-1] == "  - unwritable: PermissionError: unwritable: read-only folder"


def test_evaluator_without_failures_returns_and_missing_checkpoint_is_refused(tmp_path):
    network, ckpt, loader = _parts(tmp_path, ["ok"])
    rows = []
    InferenceEvaluator("cpu", loader, network, SimpleInferer(), str(ckpt),
                       val_handlers=[CaseWriter(lambda case: {"case": case["case"]}, finish=rows.extend)]).run()
    assert rows == [{"case": "ok"}]
    with pytest.raises(CheckpointError, match="nowhere.pt does not exist"):
        InferenceEvaluator("cpu", loader, network, SimpleInferer(), str(tmp_path / "nowhere.pt"))
