"""The deploy package holds the app and nothing else.

``azd deploy`` and ``func azure functionapp publish`` zip this folder minus what ``.funcignore``
names (gitignore syntax, read here with pathspec as they read it). The package must hold the
app (``function_app.py``, ``functions/``, ``shared/``, ``host.json``, ``requirements.txt``;
Azure installs the requirements) and every local module it imports, and never a cache, a test
or a development-only folder: ``.mypy_cache`` alone is 16 MB.
"""

from __future__ import annotations

import ast
import os
from functools import cache
from pathlib import Path

import pathspec
import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Top-level entries the package may hold (``.python_packages``: dependencies built locally).
PACKAGE_ROOTS = {
    "function_app.py",
    "host.json",
    "requirements.txt",
    "functions",
    "shared",
    ".python_packages",
}
#: Folders that must never ship, wherever they appear.
NEVER_SHIPPED = {
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".import_linter_cache",
    ".hypothesis",
    "htmlcov",
    "tests",
    "test-output",
    "node_modules",
    ".venv",
}


@cache
def ignore_spec() -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines((ROOT / ".funcignore").read_text().splitlines())


def ignored(relative: str, *, is_dir: bool = False) -> bool:
    return ignore_spec().match_file(relative + "/" if is_dir else relative)


def package_files(root: Path = ROOT) -> list[str]:
    """What the packager would zip from ``root``: every file not ignored, an ignored folder
    taking its contents with it. A symlink is listed, not followed."""
    kept: list[str] = []
    for folder, dirs, files in os.walk(root):
        base = Path(folder).relative_to(root)
        for name in list(dirs):
            relative = (base / name).as_posix()
            if ignored(relative, is_dir=True):
                dirs.remove(name)
            elif (Path(folder) / name).is_symlink():
                dirs.remove(name)
                kept.append(relative)
        kept += [(base / n).as_posix() for n in files if not ignored((base / n).as_posix())]
    return sorted(kept)


def test_the_package_holds_only_the_app() -> None:
    files = package_files()

    strays = sorted({f.split("/")[0] for f in files} - PACKAGE_ROOTS)
    assert not strays, f"the deploy package would hold {strays}: add them to .funcignore"
    shipped_caches = [f for f in files if set(f.split("/")[:-1]) & NEVER_SHIPPED]
    assert not shipped_caches, f"caches or tests in the package: {shipped_caches[:10]}"
    for needed in ("function_app.py", "host.json", "requirements.txt"):
        assert needed in files, f"{needed} is missing from the deploy package"


@pytest.mark.parametrize(
    "path",
    [
        ".mypy_cache/3.11/shared/storage.data.json",
        ".ruff_cache/0.17.6/123456",
        ".pytest_cache/v/cache/nodeids",
        ".import_linter_cache/contracts.json",
        "shared/__pycache__/storage.cpython-311.pyc",
        "functions/__pycache__/actions.cpython-311.pyc",
        "shared/storage.pyc",
        "tests/test_infra.py",
        "tests/e2e/conftest.py",
        "test-output/ops.png",
        "htmlcov/index.html",
        ".coverage",
        "bench/__main__.py",
        "sandbox/server.py",
        "devhost/run.py",
        "tools/checkov.sh",
        "node_modules/azurite/package.json",
        ".venv/bin/python",
        ".venv-checkov/bin/checkov",
        ".run/azurite/__azurite_db_queue__.json",
        "__azurite_db_table__.json",
        "__blobstorage__/x",
        "local.settings.json",
        ".azure/prod/.env",
        "docs/deploy.md",
        "infra/main.bicep",
        "schemas/outbound-message.json",
        "connector/apiDefinition.swagger.json",
    ],
)
def test_caches_tests_and_development_files_stay_out_wherever_they_appear(path: str) -> None:
    assert ignored(path), f".funcignore lets {path} into the deploy package"


def local_imports(path: Path) -> set[str]:
    """Top-level names ``path`` imports that are folders or modules of this repository."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return {n for n in names if (ROOT / n).is_dir() or (ROOT / f"{n}.py").is_file()}


def test_the_package_holds_every_module_of_the_app_and_every_local_module_it_imports() -> None:
    files = set(package_files())
    sources = [ROOT / "function_app.py", *(ROOT / "functions").rglob("*.py")]
    sources += (ROOT / "shared").rglob("*.py")
    app_modules = sorted(p.relative_to(ROOT).as_posix() for p in sources)

    missing = sorted(set(app_modules) - files)
    assert not missing, f".funcignore leaves out modules the app needs: {missing}"
    imported = set().union(*(local_imports(ROOT / m) for m in app_modules))
    assert imported == {"functions", "shared"}, (
        f"the app imports {sorted(imported - {'functions', 'shared'})}, which the package "
        "leaves out (development-only code must not be imported at run time)"
    )


def test_the_package_check_sees_a_stray_folder(tmp_path: Path) -> None:
    for relative in ("function_app.py", "shared/a.py", "stray/b.py", "shared/__pycache__/a.pyc"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("")

    assert package_files(tmp_path) == ["function_app.py", "shared/a.py", "stray/b.py"]
