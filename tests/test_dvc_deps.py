"""Every DVC stage declares, as dependencies, all the code its command runs.

A module that a stage imports (directly, through another module, or inside a function) but does not
declare lets DVC serve a cached result computed by old code. The check is static: it reads each stage's
command for its entry script (`python stages/X.py` or `python -m bnnrepro.X`), follows the `import`
statements of bnnrepro modules from there, and requires each module file to be a declared dependency or
to sit inside a declared folder.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = [ROOT / "dvc.yaml", *sorted((ROOT / "grids").glob("*/dvc.yaml"))]


def stage_bodies():
    """(pipeline file, stage name, stage body) for every stage; foreach stages give their `do` body."""
    for pipeline in PIPELINES:
        for name, stage in yaml.safe_load(pipeline.read_text())["stages"].items():
            yield pipeline.relative_to(ROOT), name, stage.get("do", stage)


def entry_module(cmd: str) -> Path:
    if m := re.match(r"python (stages/\w+\.py)", cmd):
        return ROOT / m.group(1)
    if m := re.match(r"python -m (bnnrepro(?:\.\w+)+)", cmd):
        return module_file(m.group(1))
    raise AssertionError(f"cannot tell the entry script of: {cmd}")


def module_file(name: str) -> Path | None:
    """The file that importing `name` runs, for bnnrepro modules (None for everything else)."""
    if name != "bnnrepro" and not name.startswith("bnnrepro."):
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path) -> set[str]:
    """Every module an `import` anywhere in `path` names (function bodies included: lazy imports run too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def with_parent_packages(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def code_files_run_by(entry: Path) -> set[Path]:
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path):
            for module in with_parent_packages(name):
                if (file := module_file(module)) is not None and file not in seen:
                    todo.append(file)
    return seen


def is_covered(file: Path, deps: list[str]) -> bool:
    rel = file.relative_to(ROOT)
    return any(rel == Path(dep) or Path(dep) in rel.parents for dep in deps)


STAGES = list(stage_bodies())


@pytest.mark.parametrize("pipeline,name,stage", STAGES, ids=[f"{p}:{n}" for p, n, _ in STAGES])
def test_stage_declares_all_code_it_runs(pipeline, name, stage):
    deps = [d for d in stage.get("deps", []) if "${" not in d]
    missing = sorted(str(f.relative_to(ROOT)) for f in code_files_run_by(entry_module(stage["cmd"]))
                     if not is_covered(f, deps))
    assert not missing, f"{pipeline}:{name} runs code it does not declare as deps: {missing}"


def test_the_check_follows_lazy_and_transitive_imports(tmp_path):
    """The report stage imports bnnrepro.report, which imports further modules; all must be found."""
    files = {f.relative_to(ROOT).as_posix() for f in code_files_run_by(ROOT / "stages" / "train.py")}
    assert {"bnnrepro/__init__.py", "bnnrepro/config.py", "bnnrepro/engine/train.py"} <= files  # train() imports lazily
    assert "bnnrepro/data/__init__.py" in files  # parent packages run on import
