"""Run ``python -m monai.bundle ...`` commands in forked children of one pre-imported interpreter (tests only).

A fresh ``python -m monai.bundle`` spends about five seconds importing torch, MONAI, ignite and MLflow before it
reads its first config; the test suite starts some eighty of them. This server imports those once (never a bundle's
``scripts``, never running a torch operation, so no thread pool exists when it forks) and, for each request, forks a
child that becomes exactly that command: working folder, environment, ``sys.argv`` and ``sys.path[0]`` as
``python -m`` sets them, stdout and stderr into files, ``runpy`` running ``monai.bundle.__main__``, then the
interpreter's own exit steps (uncaught exception through ``sys.excepthook``, non-daemon threads joined, ``atexit``
functions, streams flushed) and the command's exit status. What a fresh process would do differently is kept out:
``bundle_harness.run_monai_bundle`` sends a command here only when its environment matches the server's in
everything read at start-up (thread counts, ``PYTHONPATH``), and the tests of the real command line's start-up and
last line (``tests/test_workflow_endings.py``) and torchrun always start real processes.

Protocol (one JSON object per line): request ``{"args", "cwd", "env", "stdout", "stderr"}`` on stdin; replies
``{"pid": N}`` when forked and ``{"status": code}`` when the child has ended. ``BUNDLE_TESTS_FORK=0`` turns it off.
"""

from __future__ import annotations

import json
import os
import sys

# Started as ``python tests/fork_runner.py`` from the repository root: Python put ``tests/`` first on sys.path, where
# ``tests/common/`` (the tests of ``common``, no ``__init__.py``) would shadow the ``common`` package as a namespace
# package. ``python -m monai.bundle`` run from the root has the root there instead: so does this server.
sys.path[0] = os.getcwd()

#: what every ``python -m monai.bundle run`` imports before reading a config (``import monai.bundle`` pulls in torch,
#: ignite and, through ``monai.handlers``, MLflow)
PRELOAD = ("torch", "monai", "monai.bundle", "monai.bundle.__main__", "monai.handlers", "mlflow", "fire", "common",
           "common.cli")


def _exit_code(code: object) -> int:
    """What the interpreter does with ``SystemExit(code)``: None is 0, an int is itself, anything else is printed."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _child(request: dict, channel: int) -> None:
    """Become the requested command and end the process with its exit status (never returns)."""
    import atexit
    import runpy
    import threading

    code = 1
    try:
        os.close(channel)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        sys.argv = [sys.modules["monai.bundle.__main__"].__file__, *request["args"]]
        sys.path[0] = os.getcwd()
        try:
            runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = _exit_code(e.code)
        except BaseException:  # noqa: BLE001 - the interpreter's own handling of an uncaught exception
            sys.excepthook(*sys.exc_info())
            code = 1
        threading._shutdown()  # the interpreter joins non-daemon threads before atexit
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def serve() -> None:
    """Read requests from stdin until it closes; fork one child per request; report its pid, then its status."""
    import importlib

    channel = os.dup(1)
    os.dup2(2, 1)  # anything an import prints goes to stderr, never into the protocol
    reply = os.fdopen(channel, "w", buffering=1)
    for name in PRELOAD:
        importlib.import_module(name)
    sys.stdout.flush()  # nothing buffered at import time may reach a child's stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, channel)
        reply.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        reply.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")


if __name__ == "__main__":
    serve()
