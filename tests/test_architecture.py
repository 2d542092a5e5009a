"""Layering and public API: the import-linter contracts in pyproject.toml hold, and the
package's ``__all__`` is exactly its public surface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import agentiam

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_core_imports_without_web_framework_or_driver() -> None:
    """Import every core module in a fresh interpreter that blocks outer libraries."""
    code = (
        "import sys, importlib, pkgutil\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'fastapi','starlette','sqlalchemy','psycopg',"
        "'uvicorn','alembic','typer','httpx'}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import agentiam.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'agentiam.core.'):\n"
        "    importlib.import_module(m.name)\n"
        "import agentiam.ports, agentiam.services.agents\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_public_api_is_declared() -> None:
    public = {n for n in dir(agentiam) if not n.startswith("_")}
    modules = {
        "config",
        "errors",
        "core",
        "ports",
        "services",
        "adapters",
        "bootstrap",
        "cli",
        "sdk",
        "guard",  # the in-process guard's entry point (agentiam.guard)
    }
    modules |= {"annotations"}  # the __future__ import
    assert set(agentiam.__all__) - {"__version__"} == public - modules
    for name in agentiam.__all__:
        assert getattr(agentiam, name) is not None
