"""Tests of ``common.checkpoint``: atomic saves, clear load errors, resumable training and the best-model saver."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from common.checkpoint import (
    FORMAT,
    BestModelSaver,
    CheckpointError,
    ResumableCheckpoint,
    cpu_state_dict,
    list_resumable,
    load_checkpoint,
    load_network_weights,
    model_setting,
    require_checkpoint,
    save_atomic,
    settings_path,
    unwrap,
)


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------- save and load


def test_save_atomic_load_checkpoint_round_trip(tmp_path):
    obj = {"network": tiny_net().state_dict(), "epoch": 3, "note": "x"}
    save_atomic(obj, tmp_path / "models" / "ckpt.pt")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["ckpt.pt"]
    back = load_checkpoint(tmp_path / "models" / "ckpt.pt")
    assert back["epoch"] == 3 and back["note"] == "x"
    assert all(torch.equal(back["network"][k], v) for k, v in obj["network"].items())


def test_truncated_file_is_a_checkpoint_error_naming_it(tmp_path):
    path = tmp_path / "model.pt"
    save_atomic(tiny_net().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is truncated or corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is truncated or corrupt"):
        load_checkpoint(path)


def test_missing_file_says_train_first(tmp_path):
    path = tmp_path / "models" / "model.pt"
    message = rf"checkpoint {path} does not exist: train first \(same --output_dir\), or pass --ckpt_path"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=message):
        require_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"train first"):
        load_network_weights(tiny_net(), path)


def test_load_network_weights_plain_and_resumable(tmp_path):
    source = tiny_net()
    save_atomic(cpu_state_dict(source), tmp_path / "plain.pt")
    save_atomic({"format": FORMAT, "network": cpu_state_dict(source), "epoch": 1}, tmp_path / "resumable.pt")
    for name in ("plain.pt", "resumable.pt"):
        target = tiny_net()
        assert not same_weights(target, source)
        assert load_network_weights(target, tmp_path / name) is target
        assert same_weights(target, source)
    wrapped = nn.DataParallel(tiny_net())  # the DDP/DataParallel wrapper's inner module is loaded
    load_network_weights(wrapped, tmp_path / "plain.pt")
    assert same_weights(unwrap(wrapped), source)
    assert not any(k.startswith("module.") for k in cpu_state_dict(wrapped))


def test_load_network_weights_mismatch_is_clear(tmp_path):
    save_atomic(cpu_state_dict(tiny_net()), tmp_path / "model.pt")
    other = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1))
    with pytest.raises(CheckpointError, match=rf"checkpoint {tmp_path / 'model.pt'} does not fit this network: "
                                              r"[\s\S]*size mismatch"):
        load_network_weights(other, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"does not fit this network: [\s\S]*Missing key"):
        load_network_weights(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1), nn.Linear(1, 1)),
                             tmp_path / "model.pt")
    save_atomic([1, 2, 3], tmp_path / "list.pt")  # not a state dict at all
    with pytest.raises(CheckpointError, match=r"does not fit this network"):
        load_network_weights(tiny_net(), tmp_path / "list.pt")


# -------------------------------------------------------------------------------------- ResumableCheckpoint

DATA = [(torch.randn(4, 3, generator=torch.Generator().manual_seed(i)), torch.randn(4, 1)) for i in range(3)]


class Run:
    """A tiny training run: network, Adam, StepLR, a stub validator, an ignite trainer with the checkpoint handler."""

    def __init__(self, folder: Path, resume=False, keep_last: int = 2) -> None:
        torch.manual_seed(0)
        self.network = tiny_net()
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=1e-2)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)
        self.validator = SimpleNamespace(state=SimpleNamespace(best_metric=-1.0, best_metric_epoch=-1))
        self.epochs_run: list[int] = []
        self.trainer = Engine(self.step)
        self.trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: self.epochs_run.append(e.state.epoch))
        self.trainer.add_event_handler(Events.EPOCH_COMPLETED, self.validate)
        self.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: self.scheduler.step())
        self.handler = ResumableCheckpoint(folder, self.network, self.optimizer, self.scheduler, self.validator,
                                           resume=resume, keep_last=keep_last)
        self.handler.attach(self.trainer)  # last, as documented

    def step(self, engine: Engine, batch) -> float:
        x, y = batch
        self.optimizer.zero_grad()
        loss = nn.functional.mse_loss(self.network(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def validate(self, engine: Engine) -> None:
        if engine.state.epoch == 2:  # the best epoch is the second
            self.validator.state.best_metric, self.validator.state.best_metric_epoch = 0.9, 2


def test_resumable_checkpoint_keeps_last_and_resumes(tmp_path):
    first = Run(tmp_path, keep_last=2)
    first.trainer.run(DATA, max_epochs=3)
    assert first.epochs_run == [1, 2, 3]
    assert [p.name for p in list_resumable(tmp_path)] == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]
    saved = load_checkpoint(tmp_path / "checkpoint_epoch=3.pt")
    assert saved["format"] == FORMAT and saved["epoch"] == 3 and saved["iteration"] == 9
    assert saved["best_metric"] == 0.9 and saved["best_metric_epoch"] == 2
    assert all(t.device.type == "cpu" for t in saved["network"].values())

    second = Run(tmp_path, resume=True, keep_last=2)
    assert not same_weights(second.network, first.network)
    second.trainer.add_event_handler(Events.STARTED, lambda e: checks.update(
        weights=same_weights(second.network, first.network),
        adam_step=second.optimizer.state_dict()["state"][0]["step"].item(),
        lr=second.optimizer.param_groups[0]["lr"], best=second.validator.state.best_metric))
    checks: dict = {}
    second.validator.state.best_metric = -1.0  # restored from the checkpoint at STARTED
    second.trainer.run(DATA, max_epochs=5)
    assert second.epochs_run == [4, 5]  # 2 epochs actually run
    assert second.trainer.state.epoch == 5 and second.trainer.state.iteration == 15
    assert checks == {"weights": True, "adam_step": 9.0, "lr": pytest.approx(1e-2 * 0.5 ** 3), "best": 0.9}
    assert second.validator.state.best_metric_epoch == 2
    assert [p.name for p in list_resumable(tmp_path)] == ["checkpoint_epoch=4.pt", "checkpoint_epoch=5.pt"]


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    straight = Run(tmp_path / "a")
    straight.trainer.run(DATA, max_epochs=4)
    interrupted = Run(tmp_path / "b")
    interrupted.trainer.run(DATA, max_epochs=2)
    resumed = Run(tmp_path / "b", resume=True)
    resumed.trainer.run(DATA, max_epochs=4)
    assert resumed.epochs_run == [3, 4]
    for k, v in straight.network.state_dict().items():
        torch.testing.assert_close(resumed.network.state_dict()[k], v)


def test_resume_from_corrupt_newest_checkpoint(tmp_path):
    Run(tmp_path, keep_last=2).trainer.run(DATA, max_epochs=3)
    newest = tmp_path / "checkpoint_epoch=3.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"checkpoint {newest} is truncated or corrupt"):
        Run(tmp_path, resume=True).trainer.run(DATA, max_epochs=5)
    previous = tmp_path / "checkpoint_epoch=2.pt"
    assert previous.is_file() and load_checkpoint(previous)["epoch"] == 2
    explicit = Run(tmp_path, resume=str(previous))  # resume from the named file instead
    explicit.trainer.run(DATA, max_epochs=3)
    assert explicit.epochs_run == [3]


def test_resume_without_checkpoint_starts_afresh(tmp_path):
    run = Run(tmp_path / "empty", resume=True)
    run.trainer.run(DATA, max_epochs=1)
    assert run.epochs_run == [1]


def test_resume_errors(tmp_path):
    Run(tmp_path).trainer.run(DATA, max_epochs=3)
    with pytest.raises(CheckpointError, match=r"is at epoch 3, beyond --epochs 2"):
        Run(tmp_path, resume=True).trainer.run(DATA, max_epochs=2)
    save_atomic(cpu_state_dict(tiny_net()), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'plain.pt'} is not a resumable checkpoint"):
        Run(tmp_path, resume=str(tmp_path / "plain.pt")).trainer.run(DATA, max_epochs=5)
    with pytest.raises(ValueError, match=r"keep_last must be at least 1, got 0"):
        ResumableCheckpoint(tmp_path, tiny_net(), torch.optim.SGD(tiny_net().parameters(), lr=0.1), keep_last=0)


# ------------------------------------------------------------------------------------------- BestModelSaver


def test_best_model_saver_saves_only_on_a_new_best(tmp_path):
    network = tiny_net()
    saver = BestModelSaver(tmp_path / "models", network)
    state = SimpleNamespace(epoch=1, best_metric=0.5, best_metric_epoch=1, key_metric_name="val_mean_dice")
    engine = SimpleNamespace(state=state)
    saver(engine)
    path = tmp_path / "models" / "model.pt"
    first = torch.load(path, weights_only=True)
    assert all(t.device.type == "cpu" for t in first.values())
    assert all(torch.equal(first[k], v) for k, v in network.state_dict().items())

    with torch.no_grad():
        for p in network.parameters():
            p.add_(1.0)
    state.epoch = 2  # no improvement: best_metric_epoch stays 1
    saver(engine)
    assert all(torch.equal(torch.load(path, weights_only=True)[k], v) for k, v in first.items())
    state.epoch, state.best_metric, state.best_metric_epoch = 3, 0.8, 3
    saver(engine)
    assert all(torch.equal(torch.load(path, weights_only=True)[k], v) for k, v in network.state_dict().items())
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.pt"]


def test_final_selection_saves_at_every_validation_so_the_last_epoch_wins(tmp_path):
    network = tiny_net()
    saver = BestModelSaver(tmp_path / "models", network, selection="final")
    state = SimpleNamespace(epoch=1, best_metric=0.8, best_metric_epoch=1, key_metric_name="val_mean_dice")
    saver(SimpleNamespace(state=state))
    with torch.no_grad():
        for p in network.parameters():
            p.add_(1.0)
    state.epoch = 2  # worse than epoch 1 on validation: still saved
    saver(SimpleNamespace(state=state))
    saved = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in network.state_dict().items())
    with pytest.raises(ValueError, match="'best' or 'final'"):
        BestModelSaver(tmp_path, network, selection="last")


def test_best_model_saver_writes_settings_beside_a_plain_state_dict(tmp_path):
    network = tiny_net()
    saver = BestModelSaver(tmp_path / "models", network, settings={"stain_normalisation": False, "pixdim": [3, 3]})
    saver(SimpleNamespace(state=SimpleNamespace(epoch=1, best_metric=0.5, best_metric_epoch=1, key_metric_name="auc")))
    path = tmp_path / "models" / "model.pt"
    assert settings_path(path) == tmp_path / "models" / "model.json"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.json", "model.pt"]
    tiny_net().load_state_dict(torch.load(path, weights_only=True))  # still a plain state dict: strict load works
    assert model_setting(path, "stain_normalisation", True) is False
    assert model_setting(path, "pixdim", None) == [3, 3]
    assert model_setting(path, "not_recorded", 7) == 7


def test_model_setting_defaults_without_a_settings_file_and_names_a_bad_one(tmp_path):
    path = tmp_path / "model.pt"
    save_atomic(tiny_net().state_dict(), path)
    assert model_setting(path, "stain_normalisation", True) is True
    settings_path(path).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=rf"training settings {settings_path(path)} must be a JSON object"):
        model_setting(path, "stain_normalisation", True)
    settings_path(path).write_text("{not json")
    with pytest.raises(CheckpointError, match=rf"training settings {settings_path(path)} are unreadable"):
        model_setting(path, "stain_normalisation", True)


def test_best_model_saver_attaches_to_an_engine(tmp_path):
    network = tiny_net()
    snapshots = {}

    def process(engine, batch):
        with torch.no_grad():
            for p in network.parameters():
                p.add_(1.0)  # the weights change every epoch

    validator = Engine(process)

    @validator.on(Events.EPOCH_COMPLETED)  # before the saver, as MONAI updates the best metric first
    def _mark(engine):
        snapshots[engine.state.epoch] = {k: v.clone() for k, v in network.state_dict().items()}
        if engine.state.epoch == 2:  # the only new best
            engine.state.best_metric, engine.state.best_metric_epoch = 0.7, 2

    validator.state.best_metric, validator.state.best_metric_epoch, validator.state.key_metric_name = -1.0, -1, "acc"
    BestModelSaver(tmp_path, network, filename="best.pt").attach(validator)
    validator.run([0], max_epochs=3)
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert all(torch.equal(saved[k], snapshots[2][k]) for k in saved)
    assert not torch.equal(saved["0.weight"], network.state_dict()["0.weight"])


def test_list_resumable_sorts_by_epoch_number(tmp_path):
    for name in ("checkpoint_epoch=10.pt", "checkpoint_epoch=9.pt", "checkpoint_epoch=2.pt", "model.pt",
                 "checkpoint_epoch=3.pt.tmp", ".checkpoint_epoch=4.abc.tmp.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_resumable(tmp_path)] == [
        "checkpoint_epoch=2.pt", "checkpoint_epoch=9.pt", "checkpoint_epoch=10.pt"]
    assert list_resumable(tmp_path / "missing") == []


def test_fresh_run_in_a_used_folder_does_not_keep_the_old_runs_checkpoints(tmp_path):
    """Starting afresh where an earlier (longer) run left checkpoints: the new run's newest must survive pruning,
    and a later resume must continue the new run, not the old one."""
    Run(tmp_path, keep_last=2).trainer.run(DATA, max_epochs=5)  # leaves epochs 4 and 5
    fresh = Run(tmp_path, keep_last=2)
    fresh.trainer.run(DATA, max_epochs=3)
    assert [p.name for p in list_resumable(tmp_path)] == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]
    resumed = Run(tmp_path, resume=True)
    resumed.trainer.run(DATA, max_epochs=4)
    assert resumed.epochs_run == [4]


def test_require_checkpoint_passes_a_good_file_and_refuses_a_damaged_one(tmp_path):
    good, bad = tmp_path / "model.pt", tmp_path / "bad.pt"
    torch.save({"w": torch.zeros(1)}, good)
    bad.write_bytes(good.read_bytes()[:20])
    assert require_checkpoint(good) == str(good)
    with pytest.raises(CheckpointError, match=rf"checkpoint {bad} is truncated or corrupt"):
        require_checkpoint(bad)


def test_best_network_is_a_loaded_copy_in_eval_mode(tmp_path):
    from common.checkpoint import best_network

    trained = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Dropout(0.5))
    torch.nn.init.constant_(trained[0].weight, 3.0)
    torch.nn.init.constant_(trained[0].bias, -1.0)
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    network = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Dropout(0.5)).train()
    before = network[0].weight.detach().clone()
    best = best_network(network, tmp_path / "model.pt")
    assert best is not network and not best.training and network.training
    assert torch.equal(network[0].weight, before), "the trainer's network is left as it was"
    assert best(torch.tensor([[1.0, 2.0]])).item() == 3.0 * 1 + 3.0 * 2 - 1.0  # dropout off: exactly 8


def test_record_settings_adds_to_model_json_and_creates_it(tmp_path):
    import json

    from common.checkpoint import record_settings

    ckpt = tmp_path / "model.pt"
    assert record_settings(ckpt, {"temperature": 2.0}) == tmp_path / "model.json"
    record_settings(ckpt, {"conformal": {"n": 20}, "temperature": 1.5})
    assert json.loads((tmp_path / "model.json").read_text()) == {"temperature": 1.5, "conformal": {"n": 20}}


def test_best_model_fitter_fits_the_best_model_on_rank_0_only(tmp_path, monkeypatch):
    import common.checkpoint
    from common.checkpoint import BestModelFitter

    trained = torch.nn.Linear(1, 1)
    torch.nn.init.constant_(trained.weight, 2.0)
    torch.nn.init.constant_(trained.bias, 0.5)
    torch.save(trained.state_dict(), tmp_path / "model.pt")

    class Probe(BestModelFitter):
        def fit(self, network):
            return {"y": network(torch.tensor([[3.0]])).item()}

    live = torch.nn.Linear(1, 1)
    fitter = Probe(tmp_path / "model.pt", live)
    monkeypatch.setattr(common.checkpoint, "is_rank0", lambda: False)
    assert fitter(None) == {} and fitter.result == {}
    monkeypatch.setattr(common.checkpoint, "is_rank0", lambda: True)
    assert fitter(None) == {"y": 6.5} == fitter.result  # 2 * 3 + 0.5, with the checkpoint's weights
