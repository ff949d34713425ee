"""A submitted notebook, read as data: which exercises it holds, the code to run for them, and whether an
answer uses the package itself.

Read with a size cap, never following a symbolic link and never opening a FIFO or a device (a
submission is hostile data). What runs in the sandbox: the answer cells whole (those nbgrader marks as
answers, or any cell defining an exercise's function), and from the student's other cells (helpers)
their function and class definitions, their imports (not the slow plotting ones) and their simple
assignments (constants, lambdas), with blanked lines so that line numbers stay the cell's. Never the
set-up cell's grader import, the check cells, or anything that prints.

"Uses the package" is decided here only for what can be seen in the code: an import of minigpt_pixels
reached from the answer, or a string naming it passed to import machinery, `exec`/`eval`/`compile`,
`subprocess` or `os.system`. A docstring, a comment or an assert message that mentions the package is not
a use. Whatever is hidden better meets the sandbox, which has no copy of the package.
"""

import ast
import dataclasses
import errno
import json
import os
import re
import stat

from .calls import BLOCKED

MAX_NOTEBOOK_BYTES = 8 << 20  # outputs (plots) included; parsed here, in the grader: at worst ~20 bytes per byte
MAX_CODE_CHARS = 1 << 20  # all code cells together: ast.parse takes tens of bytes of memory per character
SKIPPED_IMPORTS = ("matplotlib", "IPython", "sklearn", "ipywidgets")  # outside answer cells: slow and not needed
SIMPLE_MODULES = ("np", "numpy", "math")  # a helper constant may call these: GELU_K = np.float32(1.702)
RUNNERS = {  # calls whose string arguments are code or module names: (module, function) or function alone
    "__import__", "import_module", "exec", "eval", "compile", "find_spec", "spec_from_file_location",
    "run_module", "run_path", "system", "popen", "run", "call", "check_call", "check_output", "Popen",
    "getoutput", "getstatusoutput", "execv", "execve", "execvp", "execl", "execlp", "spawnv", "spawnl",
    "load_module", "SourceFileLoader", "zipimporter"}
COPY_SUFFIX = re.compile(r"(-Copy\d+| \(\d+\)|-checkpoint)$")  # Jupyter's and browsers' copies


@dataclasses.dataclass
class Program:
    cells: list  # [{"index": cell number (1-based), "source": code}]
    exercises: list  # the exercise names this notebook holds
    uses_package: dict  # exercise name -> how its answer uses minigpt_pixels
    defined: set  # top-level function names in the code that runs
    assigned_elsewhere: dict  # name -> cell number, for names other cells assign that do not run


def read_notebook(path):
    """A notebook's JSON as {"cells": [...]}, read as data (nbformat's validation is not needed to find code
    cells, and takes seconds to import). Raises ValueError for anything that is not a notebook file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError("it is a symbolic link; hand in the notebook file itself") from None
        raise ValueError(f"it could not be opened ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("it is not a regular file (a FIFO, a device or a folder)")
        if info.st_size > MAX_NOTEBOOK_BYTES:
            raise ValueError(f"it is {info.st_size} bytes, over the grader's limit of {MAX_NOTEBOOK_BYTES}")
        data = f.read(MAX_NOTEBOOK_BYTES + 1)
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise ValueError(f"it is over the grader's limit of {MAX_NOTEBOOK_BYTES} bytes")
    nb = json.loads(data.decode("utf-8"))
    if isinstance(nb, dict) and "worksheets" in nb:  # nbformat 3: code cells keep their source in "input"
        if not isinstance(nb["worksheets"], list):
            raise ValueError("not a Jupyter notebook (worksheets is not a list)")
        nb = {"cells": [{**c, "source": c.get("input", "")} for w in nb["worksheets"] if isinstance(w, dict)
                        for c in w.get("cells", []) if isinstance(c, dict)]}
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list) or \
            not all(isinstance(c, dict) for c in nb["cells"]):
        raise ValueError("not a Jupyter notebook (no list of cells)")
    code = sum(len(_source(c)) for c in nb["cells"] if c.get("cell_type") == "code")
    if code > MAX_CODE_CHARS:
        raise ValueError(f"its code cells hold {code} characters, over the grader's limit of {MAX_CODE_CHARS}")
    return nb


def notebook_name(stem, exercises, notebooks):
    """The exercise notebook a file is a copy of: its own stem when that is one, the stem without Jupyter's
    "-Copy1", or the notebook whose exercises it holds (a renamed copy); else the stem itself."""
    base = COPY_SUFFIX.sub("", stem)
    for name in (stem, base):
        if name in notebooks:
            return name
    held = [(sum(e in names for e in exercises), name) for name, names in notebooks.items()]
    count, name = max(held, default=(0, stem))
    return name if count else stem


def notebook_exercises(nb, expected, known):
    """The exercises a notebook holds: those its notebook name promises (`expected`), then any other known
    exercise it marks (nbgrader's grade_id) or defines."""
    names = list(expected)
    for cell in nb["cells"]:
        grade_id = _nbgrader(cell).get("grade_id")
        if grade_id in known and grade_id not in names:
            names.append(grade_id)
    for cell in nb["cells"]:
        for fn in _top_level_defs(_source(cell)):
            if fn in known and fn not in names:
                names.append(fn)
    return names


def _nbgrader(cell):
    meta = cell.get("metadata")
    meta = meta.get("nbgrader") if isinstance(meta, dict) else None
    return meta if isinstance(meta, dict) else {}


def _source(cell):
    src = cell.get("source", "")
    return "".join(map(str, src)) if isinstance(src, list) else str(src)


def _parse(source):
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _top_level_defs(source):
    tree = _parse(source) if "def " in source else None
    return [s.name for s in tree.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))] if tree else []


def _is_answer(cell, exercises):
    return bool(_nbgrader(cell).get("solution")) or any(fn in exercises for fn in _top_level_defs(_source(cell)))


def _import_root(stmt):
    if isinstance(stmt, ast.Import):
        return [a.name.split(".")[0] for a in stmt.names]
    if isinstance(stmt, ast.ImportFrom):
        return [(stmt.module or "").split(".")[0]] if not stmt.level else [""]
    return []


def _is_grader_api(stmt):
    """`from minigpt_pixels.exercises import check, describe`: the notebooks' own set-up, not an answer."""
    return (isinstance(stmt, ast.ImportFrom) and stmt.module == f"{BLOCKED}.exercises"
            and all(a.name in ("check", "describe") for a in stmt.names))


def _bound_names(stmt):
    if isinstance(stmt, ast.Import):
        return [a.asname or a.name.split(".")[0] for a in stmt.names]
    return [a.asname or a.name for a in stmt.names]


def _is_simple_assignment(stmt):
    """`GELU_K = 1.702`, `sigmoid = lambda z: ...`, `SQRT2 = np.sqrt(2.0)`: a helper constant or lambda,
    kept with the functions that read it. Calls other than NumPy's and math's (a plot, a file) are not."""
    if not isinstance(stmt, (ast.Assign, ast.AnnAssign)) or stmt.value is None:
        return False
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    if not all(isinstance(t, ast.Name) for t in targets):
        return False
    return not any(True for _ in _calls_outside_lambdas(stmt.value))


def _calls_outside_lambdas(node):
    if isinstance(node, ast.Lambda):
        return
    if isinstance(node, ast.Call) and not _rooted_at(node.func, SIMPLE_MODULES):
        yield node
    for child in ast.iter_child_nodes(node):
        yield from _calls_outside_lambdas(child)


def _rooted_at(node, names):
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) and node.id in names


def extract(nb, exercises):
    """The code to run for `exercises` (a Program); see the module docstring."""
    cells, package_names, defs, elsewhere = [], {}, {}, {}
    for i, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") != "code":
            continue
        source = _source(cell)
        tree = _parse(source)
        answer = _is_answer(cell, exercises)
        if tree is None:  # a syntax error: an answer cell still runs, so the student hears of it
            if answer:
                cells.append({"index": i + 1, "source": source})
            continue
        lines = source.split("\n")
        keep = [False] * len(lines)
        for stmt in tree.body:
            roots = _import_root(stmt)
            if _is_grader_api(stmt):
                continue
            if BLOCKED in roots:
                for name in _bound_names(stmt):
                    package_names[name] = (f"`{ast.get_source_segment(source, stmt)}` (cell {i + 1}, line "
                                           f"{stmt.lineno})")
                if not answer:
                    continue
            is_def = isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if is_def:
                defs[stmt.name] = (stmt, source, i + 1)
            kept = answer or is_def or _is_simple_assignment(stmt) or (roots and not set(roots) & set(SKIPPED_IMPORTS))
            if not kept:
                for t in getattr(stmt, "targets", [getattr(stmt, "target", None)]):
                    if isinstance(t, ast.Name):
                        elsewhere.setdefault(t.id, i + 1)
                continue
            first = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
            for n in range(first - 1, stmt.end_lineno):
                keep[n] = True
        kept_source = "\n".join(line if k else "" for line, k in zip(lines, keep))
        if kept_source.strip():
            cells.append({"index": i + 1, "source": kept_source})
    uses = {name: how for name in exercises if (how := _package_use(name, defs, package_names))}
    return Program(cells, list(exercises), uses, set(defs), elsewhere)


def _package_use(name, defs, package_names):
    """How the function `name`, or a helper it calls, reaches minigpt_pixels in plain sight; None if not."""
    seen, todo = set(), [name]
    while todo:
        fn = todo.pop()
        if fn in seen or fn not in defs:
            continue
        seen.add(fn)
        node, source, cell = defs[fn]
        local = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)} if hasattr(node, "args") else set()
        local |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Import, ast.ImportFrom)) and BLOCKED in _import_root(sub):
                return f"`{ast.get_source_segment(source, sub)}` (cell {cell}, line {sub.lineno})"
            if isinstance(sub, ast.Call) and _call_name(sub.func) in RUNNERS:
                for arg in ast.walk(sub):
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and BLOCKED in arg.value:
                        return f"the string {arg.value[:80]!r} passed to {_call_name(sub.func)} (cell {cell}, " \
                               f"line {sub.lineno})"
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
                if sub.id in package_names and sub.id not in defs and sub.id not in local:
                    return package_names[sub.id]
                todo.append(sub.id)
    return None


def _call_name(func):
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


__all__ = ["Program", "read_notebook", "notebook_name", "notebook_exercises", "extract", "MAX_NOTEBOOK_BYTES",
           "MAX_CODE_CHARS"]
