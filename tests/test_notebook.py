"""The demo notebook runs top to bottom on a CPU."""

from pathlib import Path

import nbformat
from jupyter_client.kernelspec import find_kernel_specs
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "demo.ipynb"


def test_demo_notebook_runs():
    assert "python3" in find_kernel_specs(), "the python3 kernel is missing: install the dev extra (ipykernel)"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(o.output_type == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
