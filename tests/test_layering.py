"""Imports point down only: mnv2_fast.tools -> the runtime (mnv2_fast/*.py) -> kernels/.

Read from the source with `ast`, function-level imports included: kernels/ imports only
torch, triton, the standard library and its own modules; the runtime never imports the tools;
and `import mnv2_fast` imports no Triton (the interpreter switch must stay open until the
kernels load)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = sorted((ROOT / "mnv2_fast").glob("*.py"))
KERNELS = sorted((ROOT / "kernels").glob("*.py"))


def _imports(path: Path, package: str) -> list[str]:
    """Absolute names of everything `path` imports (relative imports resolved within `package`)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
                # `from . import x` may name a submodule: count it as one.
                names += [module] + ([f"{module}.{a.name}" for a in node.names] if not node.module else [])
            else:
                names.append(node.module)
    return names


def test_the_layers_have_files():
    assert len(KERNELS) >= 8 and len(RUNTIME) >= 6


@pytest.mark.parametrize("path", KERNELS, ids=lambda p: p.name)
def test_kernels_import_only_torch_triton_and_themselves(path):
    for name in _imports(path, "mnv2_fast.kernels"):
        own = name == "mnv2_fast.kernels" or name.startswith("mnv2_fast.kernels.")
        assert own or name.split(".")[0] in set(sys.stdlib_module_names) | {"torch", "triton"}, \
            f"kernels/{path.name} imports {name}"


@pytest.mark.parametrize("path", RUNTIME, ids=lambda p: p.name)
def test_the_runtime_never_imports_the_tools(path):
    for name in _imports(path, "mnv2_fast"):
        assert not name.startswith("mnv2_fast.tools"), f"mnv2_fast/{path.name} imports {name}"
        assert name.split(".")[0] in set(sys.stdlib_module_names) | {"torch", "mnv2_fast"}, \
            f"mnv2_fast/{path.name} imports {name}: the runtime needs torch only (and triton through the kernels)"


def test_the_import_reader_sees_relative_and_nested_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n"
                     "def f():\n    from .tools import cli\n    from . import tools\n    from ..kernels import x\n")
    assert _imports(probe, "mnv2_fast.tools") == ["os", "mnv2_fast.tools.tools", "mnv2_fast.tools",
                                                  "mnv2_fast.tools.tools", "mnv2_fast.kernels"]


def test_importing_the_package_and_building_the_model_import_no_triton():
    code = ("import sys, mnv2_fast; mnv2_fast.mobilenet_v2(width_mult=0.35);"
            "assert 'triton' not in sys.modules and 'mnv2_fast.kernels' not in sys.modules, 'triton imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
