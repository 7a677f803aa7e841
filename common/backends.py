"""Inference backends: the same network run eagerly by PyTorch, as TorchScript, or by ONNX Runtime on the CPU.

Every bundle's ``inference.json`` has a ``backend`` id (``torch`` default, ``torchscript``, ``onnxruntime``) and
builds its ``network`` as
``$common.backends.with_backend(@network_def.to(@device, memory_format=@memory_format), @backend)``. For ``torch`` the
eager network is returned unchanged. Otherwise :class:`BackendNetwork` wraps it, so the bundle's inference code
needs no change: ``load_state_dict``/``state_dict``/``eval``/``to`` reach the eager module (also through
:func:`common.checkpoint.unwrap`, which finds it as ``.module``), and the first forward pass without gradients after
the weights changed exports the current weights and runs the export from then on:

- ``torchscript``: ``torch.jit.script`` (``torch.jit.trace`` on the first input where scripting fails);
- ``onnxruntime``: ``torch.onnx.export`` (the TorchScript-based exporter, ``dynamo=False``, opset 17) with a dynamic
  batch axis and dynamic spatial axes, run by an ``onnxruntime`` CPU session with every graph optimisation and
  PyTorch's thread count. A network that exporter cannot express for any size (``AdaptiveAvgPool2d`` to a size
  that does not divide its input's, as in the tiny breast classifier) is exported for the spatial size it is given
  (by the ``torch.export``-based exporter, which needs ``onnxscript``, where the older one fails), and again for
  another size. Torch tensors go in and come out, so MONAI's inferers
  (sliding window, slice-wise) work unchanged.

An export is checked once against the eager network on the first sample it is made from (max abs difference
<= ``1e-4 * max(1, max |logit|)``, else :class:`BackendError`): a prediction is never silently different. Forward
passes with gradients enabled or in training mode (Grad-CAM explanations, training) run the eager module.

Export alone, from the repository root (the model cards print it per bundle)::

    python -m common.backends export --config_file bundles/brain/configs/inference.json \\
        --ckpt_path /tmp/brain_out/models/model.pt --filepath /tmp/brain_out/models/model.onnx

Sources: https://pytorch.org/docs/stable/onnx_torchscript.html, https://onnxruntime.ai/docs/performance/tune-performance/
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "torchscript", "onnxruntime")
ONNX_OPSET = 17
ONNX_INPUT, ONNX_OUTPUT = "input", "output"


class BackendError(ValueError):
    """An unknown backend, a missing runtime package, or an export that differs from the eager network."""


def check_backend(backend: Any) -> str:
    """``backend`` as one of :data:`BACKENDS` (case and surrounding spaces ignored).

    Raises:
        BackendError: any other value (the message names it and the choices).
    """
    name = str(backend).strip().lower()
    if name not in BACKENDS:
        raise BackendError(f"unknown inference backend {backend!r}: choose one of {', '.join(BACKENDS)} (--backend)")
    return name


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module.

    Raises:
        BackendError: it is not installed (the message says how to install the pinned version).
    """
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendError("backend 'onnxruntime' needs the onnxruntime package, which is not installed: "
                           "pip install onnx==1.23.2 onnxruntime==1.32.0 onnxscript==0.7.2 (pinned in "
                           "requirements.txt), or run with --backend torch") from e
    return onnxruntime


def _dynamic_axes(ndim: int) -> dict[int, str]:
    """Batch axis 0 and every spatial axis (2 ..) dynamic; the channel axis is fixed."""
    return {0: "batch", **{axis: f"spatial{axis - 2}" for axis in range(2, ndim)}}


def export_onnx(network: torch.nn.Module, example: torch.Tensor, output_ndim: int | None = None,
                dynamic_spatial: bool = True) -> bytes:
    """The ONNX model (bytes) of ``network`` in eval mode, traced on ``example`` (``B x C x spatial``) with a
    dynamic batch axis and, with ``dynamic_spatial``, dynamic spatial axes (those of the output too when it has the
    input's rank, e.g. a segmentation; a classifier's ``B x K`` output only has the batch axis dynamic). Without
    ``dynamic_spatial`` the model takes only ``example``'s spatial size (needed by e.g. ``AdaptiveAvgPool2d`` to a
    size other than 1, which the exporter cannot express for a dynamic input)."""
    output_ndim = example.ndim if output_ndim is None else int(output_ndim)
    spatial = _dynamic_axes if dynamic_spatial else (lambda ndim: {0: "batch"})
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter warns that it is deprecated, and about traces
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (example,), buffer, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT], do_constant_folding=True,
                          dynamic_axes={ONNX_INPUT: spatial(example.ndim),
                                        ONNX_OUTPUT: spatial(output_ndim) if output_ndim == example.ndim
                                        else {0: "batch"}})
    return buffer.getvalue()


def export_onnx_dynamo(network: torch.nn.Module, example: torch.Tensor) -> bytes:
    """The ONNX model (bytes) of ``network`` by the ``torch.export``-based exporter (needs ``onnxscript``), batch
    axis dynamic, spatial size ``example``'s: for what the TorchScript-based exporter cannot express (e.g.
    ``AdaptiveAvgPool2d`` to a size that does not divide its input's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(network, (example,), dynamo=True, input_names=[ONNX_INPUT],
                                    output_names=[ONNX_OUTPUT], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    verbose=False)
    return program.model_proto.SerializeToString()


def export_onnx_any(network: torch.nn.Module, example: torch.Tensor, output_ndim: int) -> tuple[bytes, tuple | None]:
    """``(model, static_shape)``: the ONNX model of ``network`` with dynamic spatial axes (``static_shape`` None)
    where the TorchScript-based exporter can, else for ``example``'s spatial size only (``static_shape``), by that
    exporter or, failing it, the ``torch.export``-based one. Raises the last exporter's error."""
    try:
        return export_onnx(network, example, output_ndim), None
    except Exception as e:  # noqa: BLE001 - torch.onnx raises SymbolicValueError and others
        logger.info("no ONNX export with dynamic spatial axes (%s); exporting for %s", e, tuple(example.shape[2:]))
    static = tuple(example.shape[2:])
    try:
        return export_onnx(network, example, output_ndim, dynamic_spatial=False), static
    except Exception as e:  # noqa: BLE001
        logger.info("the TorchScript-based ONNX exporter failed (%s); trying the torch.export-based one", e)
    return export_onnx_dynamo(network, example), static


def onnx_session(model: bytes | str, threads: int | None = None) -> Any:
    """An ``onnxruntime`` CPU inference session of ``model`` (bytes or a file path) with every graph optimisation and
    ``threads`` intra-op threads (default: PyTorch's ``torch.get_num_threads()``)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def export_torchscript(network: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.script(network)``, or ``torch.jit.trace(network, example)`` where scripting fails."""
    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export, but still supported
        warnings.simplefilter("ignore")
        try:
            return torch.jit.script(network)
        except Exception as e:  # noqa: BLE001 - scripting raises many types for unsupported Python
            logger.info("torch.jit.script failed (%s: %s); tracing on the first input instead", type(e).__name__, e)
            return torch.jit.trace(network, example, check_trace=False)


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A plain tensor (a MONAI ``MetaTensor`` without its metadata)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _max_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Max abs difference of ``a`` and ``b`` and the tolerance ``1e-4 * max(1, max |b|)``."""
    a, b = _plain(a).detach().float().cpu(), _plain(b).detach().float().cpu()
    if a.shape != b.shape:
        return float("inf"), 0.0
    return float((a - b).abs().max()) if a.numel() else 0.0, 1e-4 * max(1.0, float(b.abs().max()) if b.numel() else 0)


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


@contextlib.contextmanager
def without_hooks(network: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``network`` with its modules' forward/backward hooks set aside (e.g. Grad-CAM's, which ``torch.jit`` refuses
    and an export need not run), put back on exit."""
    saved = []
    for module in network.modules():
        for name in _HOOK_DICTS:
            hooks = getattr(module, name, None)
            if hooks:
                saved.append((module, name, hooks))
                setattr(module, name, type(hooks)())
    try:
        yield network
    finally:
        for module, name, hooks in saved:
            setattr(module, name, hooks)


class BackendNetwork(torch.nn.Module):
    """A network that runs eagerly, as TorchScript or in ONNX Runtime, and behaves as the eager one otherwise.

    Input: ``B x C x spatial`` float tensor (any batch and spatial size the network accepts; a ``MetaTensor`` is
    passed as a plain tensor); output: the network's tensor on the input's device. ``onnxruntime`` runs on the CPU
    (a CUDA input is copied there and the output back).

    Raises (on the first forward after the weights changed):
        BackendError: the runtime package is missing, or the export differs from the eager network.
    """

    def __init__(self, network: torch.nn.Module, backend: str = "torchscript", verify: bool = True) -> None:
        super().__init__()
        self.backend = check_backend(backend)
        self.module = network
        self.verify = bool(verify)
        self._exported: Any = None
        self._key: tuple | None = None
        self.static_shape: tuple | None = None  # set when the ONNX model takes one spatial size only
        if self.backend == "onnxruntime":
            require_onnxruntime()  # fail at start-up, not after the first case was read

    # the wrapper is transparent for checkpoints: no "module." prefix
    def state_dict(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:  # noqa: D102
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    def _weights_key(self, x: torch.Tensor) -> tuple:
        """Changes whenever a parameter or buffer is replaced or changed in place (``load_state_dict``, ``to``)."""
        tensors = [*self.module.parameters(), *self.module.buffers()]
        shape = tuple(x.shape[2:]) if self.static_shape is not None else None
        return (x.ndim, x.dtype, shape, *((id(t), t._version, t.device.type) for t in tensors))

    def _export(self, x: torch.Tensor) -> None:
        example = x[:1].detach()
        with torch.no_grad():
            eager = self.module(example)
        if not isinstance(eager, torch.Tensor):
            raise BackendError(f"backend {self.backend!r} needs a network returning one tensor, got {type(eager)}")
        try:
            with without_hooks(self.module):
                if self.backend == "onnxruntime":
                    self._exported = onnx_session(self._onnx_model(example, eager.ndim))
                else:
                    self._exported = export_torchscript(self.module, example)
        except BackendError:
            raise
        except Exception as e:  # noqa: BLE001 - the exporters raise many types
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            raise BackendError(f"backend {self.backend!r} cannot export this network ({type(e).__name__}: {first}); "
                               f"use --backend torch") from e
        logger.info("exported the network for backend %s", self.backend)
        if self.verify:
            got = self._run(example)
            diff, tol = _max_difference(got, eager)
            if not diff <= tol:
                raise BackendError(f"backend {self.backend!r}: the exported network differs from the eager one by "
                                   f"{diff:.3g} (> {tol:.3g}) on the first input {tuple(example.shape)}; use "
                                   f"--backend torch")

    def _onnx_model(self, example: torch.Tensor, output_ndim: int) -> bytes:
        """ONNX bytes (:func:`export_onnx_any`); when they take one spatial size only, :attr:`static_shape` is it and
        another size re-exports."""
        try:
            model, self.static_shape = export_onnx_any(self.module.to("cpu"), example.cpu(), output_ndim)
            return model
        finally:
            self.module.to(example.device)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "onnxruntime":
            array = x.detach().to("cpu", torch.float32).contiguous().numpy()
            out = self._exported.run([ONNX_OUTPUT], {ONNX_INPUT: array})[0]
            return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)
        return self._exported(x)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The network's output for ``x``: by the exported backend without gradients in eval mode, else eager."""
        if args or kwargs or self.module.training or torch.is_grad_enabled():
            return self.module(x, *args, **kwargs)
        x = _plain(x)
        key = self._weights_key(x)
        if self._exported is None or key != self._key:
            self._export(x)
            self._key = self._weights_key(x)
        return self._run(x)


def with_backend(network: torch.nn.Module, backend: str = "torch", verify: bool = True) -> torch.nn.Module:
    """``network`` itself for ``torch``, else a :class:`BackendNetwork` around it (the ``network`` of every bundle's
    ``inference.json``).

    Raises:
        BackendError: an unknown backend, or ``onnxruntime`` without the package.
    """
    if check_backend(backend) == "torch":
        return network
    return BackendNetwork(network, backend, verify=verify)


# ---------------------------------------------------------------------------------------------------------- export CLI
def _example_input(meta_file: Path, batch: int = 1, n: int = 2) -> torch.Tensor:
    """A random input of the shape ``network_data_format`` in ``metadata.json`` declares (``8*n`` sizes with n=2)."""
    import json

    from monai.bundle.scripts import _get_fake_spatial_shape

    declared = json.loads(meta_file.read_text())["network_data_format"]["inputs"]["image"]
    shape = (batch, int(declared["num_channels"]), *_get_fake_spatial_shape(declared["spatial_shape"], n=n))
    low, high = declared.get("value_range") or (0.0, 1.0)
    return low + (high - low) * torch.rand(*shape, generator=torch.Generator().manual_seed(0))


def export_file(config_file: str, ckpt_path: str, filepath: str, backend: str | None = None,
                overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Export the bundle network of ``config_file`` (its ``network_def``, sized by the ``models/model.json`` beside
    ``ckpt_path``) with the weights of ``ckpt_path`` to ``filepath`` (``.onnx``: ONNX, dynamic batch and spatial
    axes; ``.ts``/``.pt``: TorchScript), written atomically, after checking it against the eager network on an input
    of the shape ``configs/metadata.json`` declares. Returns ``{"filepath", "backend", "max_abs_diff"}``.

    Raises:
        BackendError: unknown file type/backend, missing onnxruntime, or an export that differs from eager.
        common.checkpoint.CheckpointError: missing or unfitting checkpoint.
    """
    from monai.bundle import ConfigParser

    from common.checkpoint import load_network_weights
    from common.io import atomic_path

    suffix = Path(filepath).suffix.lower()
    by_suffix = {".onnx": "onnxruntime", ".ts": "torchscript", ".pt": "torchscript"}
    if backend is None and suffix not in by_suffix:
        raise BackendError(f"{filepath}: unknown export file type '{suffix or '(no suffix)'}': use .onnx (ONNX "
                           f"Runtime) or .ts (TorchScript), or pass --backend")
    backend = check_backend(backend or by_suffix[suffix])
    if backend == "torch":
        raise BackendError("backend 'torch' is the eager network: nothing to export (use .onnx or .ts)")
    config = Path(config_file)
    parser = ConfigParser()
    parser.read_config(str(config))
    if config.parent.name == "configs" and (config.parent / "metadata.json").is_file():
        parser["bundle_root"] = str(config.parent.parent.resolve())  # the bundle of this config file, wherever run
    parser["ckpt_path"] = str(ckpt_path)
    for key, value in (overrides or {}).items():
        parser[key] = value
    network = parser.get_parsed_content("network_def").to("cpu")
    load_network_weights(network, ckpt_path)
    network.eval()
    example = _example_input(config.parent / "metadata.json")
    with torch.no_grad():
        eager = network(example)
    if backend == "onnxruntime":
        model, static = export_onnx_any(network, example, eager.ndim)
        if static is not None:
            logger.warning("%s takes inputs of spatial size %s only (the network has no ONNX form for a dynamic "
                           "size)", filepath, static)
        got = torch.from_numpy(onnx_session(model).run([ONNX_OUTPUT], {ONNX_INPUT: example.numpy()})[0])
    else:
        model = export_torchscript(network, example)
        with torch.no_grad():
            got = model(example)
    diff, tol = _max_difference(got, eager)
    if not diff <= tol:
        raise BackendError(f"{filepath}: the {backend} export differs from the eager network by {diff:.3g} "
                           f"(> {tol:.3g})")
    with atomic_path(filepath) as tmp:
        if backend == "onnxruntime":
            Path(tmp).write_bytes(model)
        else:
            torch.jit.save(model, tmp)
    logger.info("wrote %s (%s; max abs difference to eager %.3g)", filepath, backend, diff)
    return {"filepath": str(filepath), "backend": backend, "max_abs_diff": diff}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m common.backends export --config_file ... --ckpt_path ... --filepath ...`` (see the module doc)."""
    from common import errors

    errors.install()
    parser = argparse.ArgumentParser(prog="python -m common.backends", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="export a bundle network to ONNX (.onnx) or TorchScript (.ts)")
    export.add_argument("--config_file", required=True, help="the bundle's configs/inference.json")
    export.add_argument("--ckpt_path", required=True, help="the trained model.pt (model.json beside it sizes the net)")
    export.add_argument("--filepath", required=True, help="output file: .onnx (ONNX Runtime) or .ts (TorchScript)")
    export.add_argument("--backend", default=None, choices=BACKENDS[1:], help="default: from the file suffix")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = export_file(args.config_file, args.ckpt_path, args.filepath, args.backend)
    print(f"wrote {result['filepath']} ({result['backend']}, max abs difference to eager {result['max_abs_diff']:.3g})")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
