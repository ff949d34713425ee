"""The trainer's rooms (issue 24): train.py opens with train_step and the loop; the images live in
datasets.py and the checkpoints and exports in checkpoints.py, which the probe, notebooks and scripts
import instead of the command-line module; short functions, modules under 600 lines, imports one way."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minigpt_pixels"
ROOMS = ("train.py", "datasets.py", "checkpoints.py")


def tree(path):
    return ast.parse(path.read_text(encoding="utf-8"))


def defined(module):
    return {n.name for n in tree(PACKAGE / module).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


@pytest.mark.parametrize("module", ROOMS)
def test_short_functions_and_modules(module):
    path = PACKAGE / module
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 600
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree(path))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 50]
    assert not long, long


def test_train_step_and_the_loop_come_first():
    functions = [n.name for n in tree(PACKAGE / "train.py").body if isinstance(n, ast.FunctionDef)]
    assert functions[:5] == ["train_step", "loss_and_grads", "evaluate", "train", "run"]
    first = next(n for n in tree(PACKAGE / "train.py").body if isinstance(n, ast.FunctionDef))
    assert first.lineno <= 60


@pytest.mark.parametrize("module", ["datasets.py", "checkpoints.py"])
def test_the_library_rooms_do_not_import_the_command_line(module):
    imported = set()
    for n in ast.walk(tree(PACKAGE / module)):
        if isinstance(n, ast.ImportFrom):
            imported.add(n.module or "")
            imported.update(a.name for a in n.names if not n.module)
        elif isinstance(n, ast.Import):
            imported.update(a.name for a in n.names)
    assert not {m for m in imported if m in ("train", "minigpt_pixels.train", "sample", "probe")}, imported


def users():
    return [*sorted((PACKAGE / "probe").glob("*.py")), *sorted((ROOT / "notebooks" / "src").glob("*.py")),
            *sorted((ROOT / "scripts").glob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]


def test_data_and_checkpoint_helpers_are_imported_from_their_rooms():
    """The probe, the notebooks and the scripts read images and checkpoints through datasets.py and
    checkpoints.py, not through the command-line module."""
    moved = defined("datasets.py") | defined("checkpoints.py")
    wrong = []
    for path in users():
        for n in ast.walk(tree(path)):
            if isinstance(n, ast.ImportFrom) and n.module in ("minigpt_pixels.train", "train") and n.level in (0, 1):
                wrong += [f"{path.name}: {a.name}" for a in n.names if a.name in moved]
            elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "train":
                wrong += [f"{path.name}: train.{n.attr}"] if n.attr in moved else []
    assert not wrong, wrong
