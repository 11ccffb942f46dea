"""The colabs run top to bottom (small settings: RODS_NB_SMALL=1), as a user would run them."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("quickstart", "boundary_analysis", "bfcl_eval")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, monkeypatch):
  monkeypatch.setenv("RODS_NB_SMALL", "1")
  monkeypatch.setenv("RODS_REPO", REPO)
  monkeypatch.setenv("XLA_FLAGS", "")  # one CPU device in the kernel, like a Colab CPU runtime
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  path = os.path.join(REPO, "colabs", f"{name}.ipynb")
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": os.path.join(REPO, "colabs")}})
  client.execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  assert "small settings" in text
