"""The quickstart notebook runs top to bottom (nbclient); a failing cell fails the test."""

import nbformat
from nbclient import NotebookClient

from conftest import REPO


def test_quickstart_notebook_runs(tmp_path):
    notebook = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    # run from a scratch folder: the notebook finds recipes and data from the repository root, writes runs/ here
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []))
    assert "test accuracy" in outputs and "bits/byte" in outputs
    assert (tmp_path / "runs" / "quickstart" / "sentiment" / "hub" / "README.md").is_file()
    images = [out for cell in notebook.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert images, "the loss plot was not drawn"
