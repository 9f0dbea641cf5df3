"""Every tutorial notebook in notebooks/ runs from top to bottom without an error, offline, on a CPU, the way a user
runs it: a kernel that imports the installed package (pip install -e .), from the notebooks folder. Notebook 6
evaluates what notebook 5 trained, so they run in order."""
import glob
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # nothing but the installed package: train.py is not importable
    # glibc hands every allocation over 32 MiB back to the OS when it is freed, so each of the ~100 MB logits tensors
    # over Qwen's 150k-token vocabulary is page-faulted in afresh: keeping them in the heap halves the notebooks' time
    for name, value in [("MALLOC_MMAP_THRESHOLD_", str(2**30)), ("MALLOC_TRIM_THRESHOLD_", str(2**32))]:
        if name not in os.environ:
            monkeypatch.setenv(name, value)
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": os.path.dirname(path)}})
    client.execute()  # raises nbclient.exceptions.CellExecutionError, with the cell and its traceback, on any error
