"""Tests of ``common.transfer``: loading by name, freezing, discriminative learning rates, errors, resume (issue 16)."""

from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.networks.nets import SegResNet, UNet
from torch import nn

from common import transfer
from common.checkpoint import CheckpointError, ResumableCheckpoint, save_atomic


class TinyNet(nn.Module):
    """conv -> BN -> conv -> BN -> pooled linear head (24 state-dict tensors would be too many to check by hand)."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


PRESETS = {"encoder": ["features.0", "features.1"]}


def data(n: int = 8):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(1, 6, 6, generator=g) * 3 + 1, "label": torch.tensor(i % 2)} for i in range(n)]


def train(net: nn.Module, optimizer, epochs: int = 1, handlers=()):
    loader = torch.utils.data.DataLoader(data(), batch_size=4)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader, network=net,
                                optimizer=optimizer, loss_function=nn.CrossEntropyLoss(), train_handlers=list(handlers))
    trainer.run()
    return trainer


@pytest.fixture
def source(tmp_path):
    torch.manual_seed(1)
    net = TinyNet(classes=2)
    with torch.no_grad():  # non-default running statistics, so that loading them is visible
        net.features[1].running_mean.fill_(0.5)
        net.features[4].running_var.fill_(2.0)
    path = tmp_path / "source.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_changed_head_only_the_head_is_skipped(source):
    src, path = source
    torch.manual_seed(2)
    dst = transfer.prepare(TinyNet(classes=3), path)
    report = dst.transfer_report
    assert report.skipped == {"head.weight": "shape mismatch: checkpoint [2, 4] vs network [3, 4]",
                              "head.bias": "shape mismatch: checkpoint [2] vs network [3]"}
    assert len(report.loaded) == 14  # 2 conv x (weight, bias) + 2 BN x (weight, bias, mean, var, count)
    for name, value in dst.state_dict().items():
        if name.startswith("features"):
            assert torch.equal(value, src.state_dict()[name]), name
    assert not torch.equal(dst.head.bias[:2], src.head.bias)
    assert transfer.summary(dst) | {"skipped": ""} == {"loaded": 14, "skipped_missing": 0, "skipped_unexpected": 0,
                                                      "skipped_shape_mismatch": 2, "frozen": 0, "skipped": ""}


def test_missing_and_unexpected_are_reported(tmp_path, source):
    src, _ = source
    state = {k: v for k, v in src.state_dict().items() if k != "head.bias"} | {"extra.weight": torch.zeros(1)}
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    report = transfer.prepare(TinyNet(), path).transfer_report
    assert report.skipped == {"head.bias": "missing", "extra.weight": "unexpected"}
    assert len(report.loaded) == 15


def test_resumable_checkpoint_and_ddp_prefixed_state_load(tmp_path, source):
    src, _ = source
    resumable = tmp_path / "checkpoint_epoch=3.pt"
    save_atomic({"format": "common.checkpoint/1", "network": src.state_dict(), "optimizer": {}, "epoch": 3}, resumable)
    assert transfer.prepare(TinyNet(), resumable).transfer_report.skipped == {}
    ddp = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, ddp)
    net = transfer.prepare(TinyNet(), ddp)
    assert net.transfer_report.skipped == {} and torch.equal(net.head.weight, src.head.weight)


def test_frozen_parameters_and_norm_statistics_unchanged_by_training(source):
    _, path = source
    net = transfer.prepare(TinyNet(), path, ["encoder"], PRESETS)
    assert net.transfer_report.frozen == ["features.0.weight", "features.0.bias", "features.1.weight",
                                          "features.1.bias"]
    assert net.transfer_report.frozen_norms == ["features.1"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.SGD(transfer.param_groups(net, 0.5), lr=0.5)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 4 * 4 * 9 + 4 + 4 + 4 + 4 * 2 + 2
    train(net, optimizer, epochs=2)
    after = net.state_dict()
    for name in ("features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
                 "features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked"):
        assert torch.equal(after[name], before[name]), f"{name} changed although frozen"
    for name in ("features.3.weight", "features.4.weight", "features.4.running_mean", "features.4.running_var",
                 "head.weight"):
        assert not torch.equal(after[name], before[name]), f"{name} did not train"
    assert int(after["features.4.num_batches_tracked"]) == 4  # 2 epochs x 2 batches: the unfrozen BN kept training
    net.train()
    assert not net.features[1].training and net.features[4].training


def test_pretrained_lr_scale_reaches_the_optimizer(source):
    _, path = source
    net = transfer.prepare(TinyNet(classes=3), path, ["features.0"])
    optimizer = torch.optim.AdamW(transfer.param_groups(net, 1e-3, 0.1))
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(1e-4), 1e-3]
    loaded = {id(p) for p in optimizer.param_groups[0]["params"]}
    named = dict(net.named_parameters())
    assert loaded == {id(named[n]) for n in ("features.1.weight", "features.1.bias", "features.3.weight",
                                             "features.3.bias", "features.4.weight", "features.4.bias")}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == {id(named["head.weight"]), id(named["head.bias"])}
    # the scheduler anneals each group from its own start
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2)
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(5e-5), pytest.approx(5e-4)]
    # scale 1 or no checkpoint: one group of the trainable parameters
    assert len(transfer.param_groups(net, 1e-3, 1.0)) == 1
    assert len(transfer.param_groups(transfer.prepare(TinyNet()), 1e-3, 0.1)) == 1


@pytest.mark.parametrize("case, message", [
    ("absent", "does not exist"),
    ("text", "corrupt"),
    ("not_state_dict", "is not a checkpoint"),
    ("no_match", "matches no tensor"),
])
def test_bad_checkpoints_name_the_file(tmp_path, case, message):
    path = tmp_path / f"{case}.pt"
    if case == "text":
        path.write_text("not a checkpoint")
    elif case == "not_state_dict":
        torch.save([1, 2, 3], path)
    elif case == "no_match":
        torch.save({"other.weight": torch.zeros(3), "features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError) as err:
        transfer.prepare(TinyNet(), path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_bad_freeze_names_the_prefix_and_lists_valid_names():
    with pytest.raises(transfer.TransferError) as err:
        transfer.prepare(TinyNet(), None, ["feature"])
    assert "'feature'" in str(err.value) and "['features', 'head']" in str(err.value)
    with pytest.raises(transfer.TransferError, match="'features.10'"):  # whole components: not 'features.1'
        transfer.prepare(TinyNet(), None, ["features.10"])
    with pytest.raises(transfer.TransferError, match=r"preset 'encoder' names \['decoder'\]"):
        transfer.prepare(TinyNet(), None, "encoder", {"encoder": ["decoder"]})
    with pytest.raises(transfer.TransferError, match="nothing left to train"):
        transfer.prepare(TinyNet(), None, ["features", "head"])
    with pytest.raises(transfer.TransferError, match="pretrained_lr_scale"):
        transfer.param_groups(TinyNet(), 1e-3, -1)


def test_resume_of_a_fine_tuning_run_keeps_the_frozen_set(tmp_path, source):
    _, path = source
    models = tmp_path / "models"

    def run(freeze, epochs, resume):
        net = transfer.prepare(TinyNet(), path, freeze, PRESETS)
        optimizer = torch.optim.AdamW(transfer.param_groups(net, 1e-2, 0.1))
        saver = ResumableCheckpoint(models, net, optimizer, resume=resume)
        trainer = train(net, optimizer, epochs=epochs, handlers=[saver])
        return net, trainer

    first, _ = run(["encoder"], 1, False)
    frozen = {k: v.clone() for k, v in first.state_dict().items() if k.startswith("features.0")
              or k.startswith("features.1")}
    state = torch.load(models / "checkpoint_epoch=1.pt", weights_only=False)
    assert state["frozen"] == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias"]
    resumed, trainer = run(["encoder"], 3, True)
    assert trainer.state.epoch == 3
    assert [n for n, p in resumed.named_parameters() if not p.requires_grad] == state["frozen"]
    for name, value in frozen.items():
        assert torch.equal(resumed.state_dict()[name], value), f"{name} moved during the resumed run"
    assert not resumed.features[1].training
    with pytest.raises(CheckpointError) as err:  # resuming without the freeze: refused, naming the checkpoint
        run([], 4, True)
    assert "checkpoint_epoch=3.pt" in str(err.value) and "--freeze" in str(err.value)


def test_model_zoo_segresnet_layout_loads_completely(tmp_path):
    """``brats_mri_segmentation``'s model.pt is a plain SegResNet state dict (init_filters 16, blocks_down 1,2,2,4)."""
    zoo = SegResNet(spatial_dims=3, init_filters=16, in_channels=4, out_channels=3, blocks_down=(1, 2, 2, 4),
                    blocks_up=(1, 1, 1), dropout_prob=0.2)
    path = tmp_path / "model.pt"
    torch.save(zoo.state_dict(), path)
    net = SegResNet(spatial_dims=3, init_filters=16, in_channels=4, out_channels=3, blocks_down=(1, 2, 2, 4),
                    blocks_up=(1, 1, 1))
    net = transfer.prepare(net, path, "encoder", {"encoder": transfer.segresnet_encoder})
    assert net.transfer_report.skipped == {} and len(net.transfer_report.loaded) == len(zoo.state_dict())
    assert all(torch.equal(v, zoo.state_dict()[k]) for k, v in net.state_dict().items())
    assert {n.split(".")[0] for n in net.transfer_report.frozen} == {"convInit", "down_layers"}


def test_unet_encoder_preset_is_the_down_path_and_bottom():
    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16, 32), strides=(2, 2, 2),
               num_res_units=1, norm="batch")
    assert transfer.unet_encoder(net) == ["model.0", "model.1.submodule.0", "model.1.submodule.1.submodule.0",
                                          "model.1.submodule.1.submodule.1.submodule"]
    transfer.prepare(net, None, "encoder", {"encoder": transfer.unet_encoder})
    assert not any(p.requires_grad for p in net.model[0].parameters())
    assert all(p.requires_grad for p in net.model[2].parameters())


def test_handler_free_eval_survives_the_trainer_calling_train_each_iteration(source):
    """SupervisedTrainer calls network.train() inside every iteration; the frozen BN must still be in eval mode
    during the forward pass (checked from a forward hook)."""
    _, path = source
    net = transfer.prepare(TinyNet(), path, ["features.1"])
    seen = []
    net.features[1].register_forward_hook(lambda m, i, o: seen.append(m.training))
    net.features[4].register_forward_hook(lambda m, i, o: seen.append(("other", m.training)))
    trainer_optim = torch.optim.SGD(transfer.param_groups(net, 0.1), lr=0.1)
    trainer = train(net, trainer_optim)
    assert trainer.state.iteration == 2
    assert seen == [False, ("other", True)] * 2
