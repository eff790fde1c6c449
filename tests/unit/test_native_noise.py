"""TensorFlow's native start-up lines (oneDNN CPUs) are dropped from the terminal; anything else it writes is kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

FAKE_TF = '''\
import os
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
os.write(2, b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on. You may see ...\\n")
os.write(2, b"E0000 a real native error line\\n")
import sys
print("python warning from the import", file=sys.stderr)
VALUE = 42
'''


def _run(code: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": f"{path}:{REPO}", "PATH": "/usr/bin:/bin"})


def test_native_noise_of_the_import_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE_TF)
    code = ("from fer_experiments.cli.native_noise import filter_tensorflow_startup\n"
            "filter_tensorflow_startup(); filter_tensorflow_startup()\n"  # twice: one hook
            "import tensorflow; print(tensorflow.VALUE, tensorflow.__spec__.name)\n"
            "import sys; print('after', file=sys.stderr)\n")
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["42", "tensorflow"]
    assert "absl::InitializeLog" not in proc.stderr and "oneDNN" not in proc.stderr
    assert proc.stderr.splitlines() == ["E0000 a real native error line", "python warning from the import", "after"]


def test_without_the_filter_the_lines_are_there(tmp_path: Path) -> None:
    # The control: the fake module does write the lines the filter removes.
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE_TF)
    proc = _run("import tensorflow", tmp_path)
    assert "absl::InitializeLog" in proc.stderr and "oneDNN custom operations" in proc.stderr


def test_an_import_error_still_reaches_the_user(tmp_path: Path) -> None:
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("import os\nos.write(2, b'native: cannot load\\n')\n"
                                                          "raise ImportError('broken install')\n")
    code = ("from fer_experiments.cli.native_noise import filter_tensorflow_startup\n"
            "filter_tensorflow_startup()\nimport tensorflow\n")
    proc = _run(code, tmp_path)
    assert proc.returncode == 1
    assert "native: cannot load" in proc.stderr and "ImportError: broken install" in proc.stderr
