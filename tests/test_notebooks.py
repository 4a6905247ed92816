"""The notebooks in notebooks/ run top to bottom (as a person would open and run them), so they never rot. Each one
prints and shows what it measures; the cells that draw return views that render offline."""

import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebook-runs")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, runs_dir, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("CIRCUITLAB_NOTEBOOK_RUNS", str(runs_dir))  # the kernel inherits the environment
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    shown = [o for o in outputs if o.get("output_type") == "execute_result"]
    assert shown, "the notebook shows no view"
    for o in shown:  # every view is offline HTML or SVG
        body = o["data"].get("text/html", "") + o["data"].get("image/svg+xml", "")
        assert body and "https://" not in body.replace("http://www.w3.org/2000/svg", "")
