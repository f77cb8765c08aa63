"""The house rules of the package layout, checked on the source (see DESIGN.md, "Layout").

* every module belongs to a floor; it imports only its own floor or lower ones
  (imports inside functions count too: a lazy import is still a dependency);
* no module imports the package face ``auq`` itself (``auq/__init__`` re-exports everything);
* no private name (``_x``) — module or attribute — is imported across packages;
* ``import auq`` stays light: scikit-learn, Pyro, matplotlib and PEFT load only when used.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "auq"

#: floors from the ground up; a module may import its own floor and the ones below
FLOORS: list[set[str]] = [
    {"utils"},
    {"types", "uncertainty", "losses", "metrics", "data", "loop"},
    {"scoring"},
    {"backbone"},
    {"heads"},
    {"members"},
    {"calibration"},
    {"plotting"},
    {"objectives"},
    {"testbed"},
    {"models"},
    {"training"},
    {"serve"},
    {"integrations"},
    {"cli"},
]
FLOOR_OF = {wing: level for level, wings in enumerate(FLOORS) for wing in wings}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, [alias.name for alias in node.names], node.lineno))
    return [f for f in found if f[0] == "auq" or f[0].startswith("auq.")]


def _wing(module: str) -> str:
    return module.split(".")[1]


MODULES = _modules()


def test_every_wing_has_a_floor():
    wings = {_wing(m) for m, _ in MODULES if m != "auq"}
    assert not wings - set(FLOOR_OF), f"wings without a floor: {sorted(wings - set(FLOOR_OF))}"


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_imports_go_down_only(module, path):
    if module == "auq":
        return  # the face re-exports every wing
    own = FLOOR_OF[_wing(module)]
    for target, names, line in _imports(module, path):
        assert target != "auq", f"{path.name}:{line} imports the package face 'auq'"
        if FLOOR_OF[_wing(target)] > own:
            pytest.fail(f"{module}:{line} imports {target} from a higher floor")
        crosses = _wing(target) != _wing(module)
        private = [p for p in target.split(".")[1:] if p.startswith("_")]
        private += [n for n in names if n.startswith("_")]
        if crosses and private:
            pytest.fail(f"{module}:{line} imports private {private} across packages")


def test_import_auq_is_light():
    code = (
        "import sys, auq; heavy = ('sklearn', 'pyro', 'matplotlib', 'peft'); "
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import auq loaded {out.stdout.strip()}"


def test_lazy_wings_resolve():
    import auq

    assert auq.plotting.ReliabilityDisplay is not None
    assert auq.conformal.ConformalPreference is not None
    assert auq.calibration.TemperatureScaler is not None
    assert auq.__version__ and auq.__version__ != "0+unknown"


@pytest.mark.parametrize("module", [m for m, _ in MODULES if not m.endswith("__main__")])
def test_every_module_imports(module):
    importlib.import_module(module)
