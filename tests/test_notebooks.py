"""The notebooks run top to bottom without errors, and are committed without outputs.

Each notebook is executed from a temporary copy with nbclient, in a Jupyter
kernel that runs this interpreter (a kernel spec written for the test, so
that no user-level "python3" spec can point at another Python).
"""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from npc_jax.data import FASHION_MNIST_DEFAULT_DIR, FASHION_MNIST_ENV

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "npc-jax-test"
TIMEOUT_S = 300          # per cell; each notebook takes ≤ ~1-2 min on 2 shared cores

# notebook -> (needs neural-tangents, needs Fashion-MNIST)
NEEDS = {
    "finite_vs_infinite.ipynb": (True, True),
    "what_npc_picks.ipynb": (True, True),
    "reading_a_run.ipynb": (False, False),
}


def _has_fashion_mnist() -> bool:
    folder = Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_DIR)
    return any(folder.glob("train-images-idx3-ubyte*"))


def _has_neural_tangents() -> bool:
    try:
        from npc_jax.infinite import import_neural_tangents
        import_neural_tangents()
        return True
    except ImportError:
        return False


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NEEDS)


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_committed_without_outputs(name):
    nb = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
                f"{name} holds outputs; clear them before committing (Jupyter: Edit → Clear "
                f"All Outputs, or `jupyter nbconvert --clear-output --inplace notebooks/{name}`).")


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """JUPYTER_PATH holding a kernel spec that runs this very interpreter."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "npc_jax tests", "language": "python"}))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NEEDS))
def test_notebook_runs(name, kernel_dir, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    needs_nt, needs_data = NEEDS[name]
    if needs_nt and not _has_neural_tangents():
        pytest.skip("needs neural-tangents 0.6.5 (pip install -e .[infinite], jax==0.5.3)")
    if needs_data and not _has_fashion_mnist():
        pytest.skip("needs Fashion-MNIST (sudo apt-get install dataset-fashion-mnist)")
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
        [str(kernel_dir), *filter(None, [os.environ.get("JUPYTER_PATH")])]))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    copy = tmp_path / name
    shutil.copy(NOTEBOOKS / name, copy)
    nb = nbformat.read(copy, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=TIMEOUT_S,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()                     # raises CellExecutionError on the first error
    errors = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.outputs if out.output_type == "error"]
    assert not errors, errors
