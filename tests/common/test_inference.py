"""common.inference: the evaluator form of every inference.json keeps going past a bad input and names it at the end."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader
from monai.inferers import SimpleInferer

from common.checkpoint import CheckpointError
from common.inference import (
    FAILED,
    FAILURE,
    PART,
    PARTS,
    SOURCE,
    CaseWriter,
    InferenceEvaluator,
    InputCases,
    collate_cases,
)
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


def _patches(name: str) -> list[dict]:
    if name == "bad":
        raise ValueError("bad: not a patch file")
    count = {"a": 3, "empty": 0, "b": 2, "d": 2, "c": 4}[name]
    return [{"case": f"{name}_{k}", "k": k} for k in range(count)]


def _load_patch(item: dict) -> dict:
    if item["case"] == "b_1":
        raise OSError("b: patch 1 is unreadable")
    return {**item, "image": torch.full((1, 2, 2), float(item["k"] + 1))}


def test_grouped_inputs_are_batched_finished_per_input_and_a_bad_one_is_named_once(tmp_path):
    """Items of one input (patches) are batched across inputs; each input's results reach ``finish_input`` when its
    last item is written; a failure item in a batch (collate_cases), an up-front failure, or a write error fails that
    input once and drops its other results; an input without items is processed (nothing to finish)."""
    network, ckpt, _ = _parts(tmp_path, [])
    dataset = InputCases(["a", "empty", "bad", "b", "d", "c"], transform=_load_patch, case_items=_patches,
                         grouped=True)
    # a_0 a_1 a_2 | bad b_0 b_1 | d_0 d_1 c_0 | c_1 c_2 c_3
    assert len(dataset) == 12 and dataset.sources == ["a", "empty", "bad", "b", "d", "c"]
    assert [(dataset[i][PART], dataset[i][PARTS]) for i in (0, 2, 11)] == [(0, 3), (2, 3), (3, 4)]
    batch = collate_cases([dataset[3], dataset[4], dataset[5]])
    assert batch[FAILED] == [("bad", "ValueError: bad: not a patch file"), ("b", "OSError: b: patch 1 is unreadable")]
    assert batch["case"] == ["b_0"] and batch["image"].shape == (1, 1, 2, 2)
    assert collate_cases([dataset[3]]) == {FAILED: [("bad", "ValueError: bad: not a patch file")]}
    finished, table = [], []

    def write(case):
        if case["case"] == "d_0":
            raise PermissionError("d: read-only folder")
        return case["pred"].sum().item()  # pred = 2 x image over 4 pixels: 8 (k + 1)

    def finish_input(parts):
        finished.append(parts)
        return [{"sum": sum(parts)}]

    writer = CaseWriter(write, finish=table.append, finish_input=finish_input)
    evaluator = InferenceEvaluator("cpu", DataLoader(dataset, batch_size=3, collate_fn=collate_cases), network,
                                   SimpleInferer(), str(ckpt), val_handlers=[writer], what="toy patches")
    with pytest.raises(BatchFailure) as info:
        evaluator.run()
    assert finished == [[8.0, 16.0, 24.0], [8.0, 16.0, 24.0, 32.0]]  # a and c, in item order
    assert table == [[{"sum": 48.0}, {"sum": 80.0}]]
    assert info.value.failures == [("bad", "ValueError: bad: not a patch file"),
                                   ("b", "OSError: b: patch 1 is unreadable"),
                                   ("d", "PermissionError: d: read-only folder")]
    assert str(info.value).startswith("toy patches: 3 input(s) failed (3 processed)")
    assert writer.parts == {}
