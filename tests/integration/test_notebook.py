"""The example notebook (docs/notebooks/quickstart.ipynb) runs from top to bottom in a real Jupyter kernel, on the
synthetic data set, and leaves what it says it leaves: a study, a champion, predictions."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow]

NOTEBOOK = REPO / "docs" / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(synthetic_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    import nbformat
    from nbclient import NotebookClient

    # The kernel inherits this environment: the data set, the project on the path, and this interpreter's folder
    # first on PATH so that the "python3" kernel is this virtual environment's Python.
    monkeypatch.setenv("FER2013_CSV", str(synthetic_csv))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit it without outputs"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    text = "\n".join(out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
                     for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "2 complete, 0 pruned, 0 failed" in text
    assert "promote: models:/fer-cnn@champion is version 1" in text
    assert text.count("true ") == 8 and "PrivateTest accuracy" in text
    # The stores are beside the notebook's working folder, as the CLI makes them.
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    champion = mlflow.MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("fer-cnn", "champion")
    assert str(champion.version) == "1" and (tmp_path / "mlruns" / "optuna.db").is_file()
