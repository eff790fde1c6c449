"""Keep TensorFlow's native start-up lines out of the terminal.

On CPUs where oneDNN's custom operations are on (AVX512-VNNI and newer), importing TensorFlow writes
"WARNING: All log messages before absl::InitializeLog() ..." and an "I0000 ... oneDNN custom operations are on" line
straight to file descriptor 2 from C++, before ``TF_CPP_MIN_LOG_LEVEL`` is read, so that variable cannot silence them.
The import is the only moment they are written: while it runs, descriptor 2 goes to a temporary file, and what was
written is replayed afterwards minus those known lines (anything else, a real error included, is kept).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import tempfile
from types import ModuleType
from typing import Any

#: Start-up lines that say nothing to a user (matched by substring).
NOISE = ("All log messages before absl::InitializeLog() is called", "oneDNN custom operations are on")


def _is_noise(line: str) -> bool:
    return any(marker in line for marker in NOISE)


class _FilteredLoader(importlib.abc.Loader):
    """Runs the real loader's ``exec_module`` with descriptor 2 captured, then replays what was not noise."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                self._loader.exec_module(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                        if not _is_noise(line)]
                if kept:
                    sys.stderr.write("".join(kept))
                    sys.stderr.flush()

    def __getattr__(self, name: str) -> Any:
        # Resources, get_code, is_package...: whatever else importlib or TensorFlow asks of the real loader.
        return getattr(self._loader, name)


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the top-level ``tensorflow`` package, once."""

    def find_spec(self, name: str, path: Any = None, target: ModuleType | None = None,
                  ) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # before find_spec below, which would otherwise come back here
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec


def filter_tensorflow_startup() -> None:
    """Filter TensorFlow's native start-up lines when it is imported later in this process (no-op if already)."""
    if "tensorflow" in sys.modules or any(isinstance(f, _TensorFlowFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TensorFlowFinder())
