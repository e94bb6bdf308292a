"""dvc.yaml must list, for every stage, the chatmill modules its script imports (directly or not):
a change to a module re-runs exactly the stages that use it, and no others."""

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def chatmill_imports(path: Path) -> set[str]:
    """Files under chatmill/ that `path` imports."""
    files = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "chatmill":
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.split(".")[0] == "chatmill"]
        else:
            continue
        for name in names:
            module = ROOT / (name.replace(".", "/") + ".py")
            files.add(module if module.exists() else ROOT / name.replace(".", "/") / "__init__.py")
    return {file for file in files if file.exists()}


def module_closure(script: Path) -> set[str]:
    seen: set[Path] = set()
    todo = list(chatmill_imports(script))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += chatmill_imports(module)
    return {str(module.relative_to(ROOT)) for module in seen}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_the_modules_it_imports(name):
    stage = STAGES[name]
    script = ROOT / re.search(r"stages/\w+\.py", stage["cmd"])[0]
    deps = {dep for dep in stage["deps"] if dep.startswith("chatmill")}
    assert deps == module_closure(script), f"dvc.yaml stage {name}: chatmill deps"
