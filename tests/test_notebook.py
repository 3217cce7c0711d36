"""notebooks/digits.ipynb runs against a checkpoint the tests produce, and the committed copy keeps its figures."""
import os
import shutil
import time

import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "digits.ipynb")
FIGURES = ["zeroshot", "retrieval", "similarity", "image_weights", "text_weights"]


def _png_outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]


def test_the_digits_notebook_runs_on_a_fresh_checkpoint(digits_run, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    copy = tmp_path / "digits.ipynb"
    shutil.copy(NOTEBOOK, copy)  # never execute (or save over) the committed notebook
    nb = nbformat.read(copy, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    figures = tmp_path / "figures"
    monkeypatch.setenv("WPCE_WORKDIR", digits_run)
    monkeypatch.setenv("WPCE_FIGURES", str(figures))
    start = time.time()
    # kernel "python3" is this interpreter's ipykernel (jupyter_client launches it with sys.executable).
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert len(_png_outputs(nb)) == len(FIGURES)
    assert sorted(os.listdir(figures)) == sorted(f"digits_{name}.png" for name in FIGURES)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "step 30, similarity 'wpce'" in text and "zero-shot top-1 on 359 held-out digits" in text
    assert time.time() - start < 120


def test_the_committed_notebook_keeps_its_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert len(_png_outputs(nb)) == len(FIGURES), "run the notebook and commit it with its outputs"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert os.path.getsize(NOTEBOOK) < 1_500_000
