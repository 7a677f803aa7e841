"""common.backends: TorchScript and ONNX Runtime give the eager network's output, transparently for the bundles."""

from __future__ import annotations

import builtins

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from common import backends
from common.checkpoint import load_network_weights, unwrap


def tiny_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 3, 1))


def eager_of(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
def test_backend_matches_eager_at_any_batch_and_spatial_size(backend):
    net = tiny_net().eval()
    wrapped = backends.with_backend(net, backend)
    assert isinstance(wrapped, backends.BackendNetwork) and unwrap(wrapped) is net
    for shape in [(2, 2, 16, 16), (3, 2, 24, 40), (1, 2, 7, 9)]:  # export on the first; others reuse it
        x = torch.randn(*shape)
        with torch.no_grad():
            out = wrapped(x)
        assert out.shape == (shape[0], 3, *shape[2:])
        assert (out - eager_of(net, x)).abs().max().item() <= 1e-4
    assert wrapped._exported is not None


def test_weights_loaded_after_export_are_used(tmp_path):
    """A checkpoint loaded through common.checkpoint (which loads into the eager module) re-exports the network."""
    net = tiny_net(0).eval()
    wrapped = backends.with_backend(net, "onnxruntime")
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        before = wrapped(x)
    torch.save(tiny_net(1).state_dict(), tmp_path / "other.pt")
    load_network_weights(wrapped, tmp_path / "other.pt")
    with torch.no_grad():
        after = wrapped(x)
    assert (after - before).abs().max().item() > 1e-3
    assert (after - eager_of(tiny_net(1).eval(), x)).abs().max().item() <= 1e-4


def test_wrapper_is_transparent_for_state_dict_eval_and_gradients():
    net = tiny_net()
    wrapped = backends.with_backend(net, "torchscript")
    assert list(wrapped.state_dict()) == list(net.state_dict())  # no "module." prefix
    wrapped.load_state_dict(tiny_net(3).state_dict())
    assert torch.equal(net[0].weight, tiny_net(3)[0].weight)
    wrapped.eval()
    assert not net.training
    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    wrapped(x).sum().backward()  # with gradients (Grad-CAM) the eager module runs
    assert x.grad is not None and wrapped._exported is None


def test_sliding_window_inferer_runs_the_onnx_network():
    net = tiny_net().eval()
    inferer = SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=3, overlap=0.25, mode="gaussian")
    x = torch.randn(1, 2, 40, 33)
    with torch.no_grad():
        out = inferer(x, backends.with_backend(net, "onnxruntime"))
        ref = inferer(x, net)
    assert (out - ref).abs().max().item() <= 1e-4


def test_torch_backend_returns_the_network_itself_and_unknown_backend_is_named():
    net = tiny_net()
    assert backends.with_backend(net, " Torch ") is net
    with pytest.raises(backends.BackendError, match=r"unknown inference backend 'tensorrt'.*torch, torchscript, "
                                                    r"onnxruntime"):
        backends.with_backend(net, "tensorrt")


def test_missing_onnxruntime_is_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(backends.BackendError, match="needs the onnxruntime package.*pip install"):
        backends.with_backend(tiny_net(), "onnxruntime")


def test_export_that_differs_from_eager_is_refused(monkeypatch):
    net = tiny_net().eval()
    wrapped = backends.with_backend(net, "torchscript")
    monkeypatch.setattr(backends, "export_torchscript", lambda module, example: (lambda x: module(x) + 1e-2))
    with pytest.raises(backends.BackendError, match="differs from the eager one by 0.01"), torch.no_grad():
        wrapped(torch.randn(1, 2, 8, 8))


def test_export_unknown_file_type_names_the_file(tmp_path):
    with pytest.raises(backends.BackendError, match=r"model.trt: unknown export file type '.trt'"):
        backends.export_file("x.json", "m.pt", str(tmp_path / "model.trt"))


@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
def test_hooks_of_an_explainer_do_not_stop_the_export(backend):
    """Grad-CAM (breast) hooks the eager module; the export is made without the hooks, and they stay in place."""
    from monai.visualize import GradCAM

    net = tiny_net().eval()
    wrapped = backends.with_backend(net, backend)
    cam = GradCAM(nn_module=unwrap(wrapped), target_layers="2")
    x = torch.randn(1, 2, 8, 8)
    assert cam(x, class_idx=1).shape == (1, 1, 8, 8)
    with torch.no_grad():
        assert (wrapped(x) - eager_of(net, x)).abs().max().item() <= 1e-4
    assert net[2]._forward_hooks and cam(x, class_idx=1).shape == (1, 1, 8, 8)


def test_adaptive_pooling_exports_per_spatial_size():
    """AdaptiveAvgPool2d(2) has no ONNX form for a dynamic input size: the export takes one size, and another size
    is exported again (from 1 x 1, as in the tiny breast classifier, the torch.export-based exporter is used)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(16, 2)).eval()
    wrapped = backends.with_backend(net, "onnxruntime")
    for shape in [(2, 1, 32, 32), (1, 1, 32, 32), (3, 1, 20, 28)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            assert (wrapped(x) - eager_of(net, x)).abs().max().item() <= 1e-4
    assert wrapped.static_shape == (20, 28)
