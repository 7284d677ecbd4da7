"""The architecture's walls and public face (DESIGN.md section 2).

- import-linter's contracts (pyproject.toml `[tool.importlinter]`) hold, and a
  deliberate wall-breaking import makes `lint-imports` fail naming the contract;
- `import npc_jax.data` stays light (no flax, optax or training stack);
- every npc_jax module declares `__all__`, and every name in it exists;
- no private name (`_x`) of one npc_jax module is used by another module or
  by experiments/ (tests may poke internals).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import npc_jax

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

needs_import_linter = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="needs import-linter (pip install -e .[dev])")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    # cwd goes first on sys.path (lint-imports inserts it), so a copy of the
    # package in cwd is analysed instead of the installed one.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@needs_import_linter
def test_import_contracts_kept():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


# (file to break, line appended to it, name of the contract that must break)
BREAKS = {
    "strategy imports train": ("strategies/passive.py", "import npc_jax.train",
                               "strategies never import train, loop or labelling"),
    "models imports report": ("models.py", "import npc_jax.report",
                              "data, models, ntk, spectral, inference import nothing of the "
                              "layers above them"),
    "spectral imports neural_tangents": ("spectral.py", "import neural_tangents",
                                         "only npc_jax.infinite imports neural_tangents"),
    "cycle inference <-> spectral": ("inference.py", "import npc_jax.spectral",
                                     "no import cycles between sibling modules"),
}


@needs_import_linter
@pytest.mark.parametrize("case", sorted(BREAKS))
def test_wall_breaking_import_fails(case, tmp_path):
    path, line, contract = BREAKS[case]
    shutil.copytree(ROOT / "npc_jax", tmp_path / "npc_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    broken = tmp_path / "npc_jax" / path
    broken.write_text(broken.read_text() + f"\n{line}\n")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{contract} BROKEN" in result.stdout, result.stdout
    assert "1 broken" in result.stdout, result.stdout


def test_experiments_do_not_import_neural_tangents():
    """experiments/ is not a package, so no contract covers it: check its imports here."""
    offenders = []
    for path in sorted((ROOT / "experiments").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names
                          if n.split(".")[0] == "neural_tangents"]
    assert not offenders, f"import it through npc_jax.infinite: {offenders}"


def test_importing_data_stays_light():
    heavy = ["flax", "optax", "npc_jax.loop", "npc_jax.train", "npc_jax.labelling",
             "npc_jax.strategies", "npc_jax.report", "npc_jax.pretraining"]
    code = (f"import sys, npc_jax.data, npc_jax\n"
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == "[]", f"import npc_jax.data imported {out.strip()}"


def test_public_names_resolve_lazily():
    for name in npc_jax.__all__:
        assert getattr(npc_jax, name) is not None, name
    assert npc_jax.Pool is npc_jax.data.Pool
    assert npc_jax.TrainConfig is importlib.import_module("npc_jax.train").TrainConfig
    assert npc_jax.loop.__name__ == "npc_jax.loop"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        npc_jax.nope  # noqa: B018


def _modules() -> list[str]:
    return sorted(["npc_jax", *(m.name for m in pkgutil.walk_packages(npc_jax.__path__,
                                                                       "npc_jax."))])


def test_every_module_declares_all():
    without = set()
    for name in _modules():
        module = importlib.import_module(name)
        if not hasattr(module, "__all__"):
            without.add(name)
            continue
        assert len(set(module.__all__)) == len(module.__all__), f"{name}.__all__ repeats a name"
        for public in module.__all__:
            exists = hasattr(module, public) or (
                hasattr(module, "__path__")
                and importlib.util.find_spec(f"{name}.{public}") is not None)
            assert exists, f"{name}.__all__ names {public!r}, which {name} does not define"
    assert not without, f"add __all__ to {sorted(without)}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _cross_module_names(path: Path, modules: set[str]):
    """(module, name, line) for every `from m import name` and `m.name` of another
    npc_jax module m used in the file at `path`."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path)
    aliases, uses = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "npc_jax":
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:   # a submodule
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                else:
                    uses.append((node.module, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules and alias.asname:     # import npc_jax.x as y
                    aliases[alias.asname] = alias.name
                elif alias.name in modules:                    # import npc_jax.x binds npc_jax
                    aliases["npc_jax"] = "npc_jax"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, inner = [node.attr], node.value
        while isinstance(inner, ast.Attribute):
            chain.append(inner.attr)
            inner = inner.value
        if not isinstance(inner, ast.Name) or inner.id not in aliases:
            continue
        dotted = [aliases[inner.id], *reversed(chain)]
        module = dotted[0]
        for part in dotted[1:]:   # walk down submodules: npc_jax.strategies.npc._x
            if f"{module}.{part}" not in modules:
                uses.append((module, part, node.lineno))
                break
            module = f"{module}.{part}"
    return [(m, n, line) for m, n, line in uses if m != here]


def test_no_private_name_crosses_modules():
    modules = set(_modules())
    files = sorted((ROOT / "npc_jax").rglob("*.py")) + sorted((ROOT / "experiments").rglob("*.py"))
    found = {}
    for path in files:
        for module, name, line in _cross_module_names(path, modules):
            if name.startswith("_") and not name.startswith("__"):
                found.setdefault((module, name), []).append(f"{path.relative_to(ROOT)}:{line}")
    assert not found, f"private names used across modules (make them public): {found}"
