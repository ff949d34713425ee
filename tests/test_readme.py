"""The documentation's Python runs: every ```python block of README.md and docs/*.md, in order (one
namespace per file, as a reader pastes them), in a fresh empty directory; and every local file the
documents link to (pictures included) is tracked in git, so a fresh clone shows it."""

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def python_blocks(path):
    return PYTHON_BLOCK.findall(path.read_text(encoding="utf-8"))


def local_links(path):
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):  # http:, mailto:, anchors
            continue
        yield target.split("#", 1)[0]


def test_the_readme_has_python_to_run():
    assert python_blocks(ROOT / "README.md")


@pytest.mark.parametrize("doc", [d for d in DOCS if python_blocks(d)], ids=lambda d: d.name)
def test_python_blocks_run(doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    for i, block in enumerate(python_blocks(doc)):
        exec(compile(block, f"{doc.name}, python block {i + 1}", "exec"), namespace)


def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return set(out.stdout.decode("utf-8").split("\0")) - {""}


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_linked_files_exist_and_are_tracked(doc):
    tracked = tracked_files()
    for target in local_links(doc):
        path = (doc.parent / target).resolve()
        assert path.exists(), f"{doc.name} links {target}, which does not exist"
        if tracked is None:
            continue  # not a git checkout (an sdist, say): existence is all we can check
        relative = path.relative_to(ROOT).as_posix()
        if path.is_dir():
            assert any(f.startswith(relative + "/") for f in tracked), f"{doc.name} links {target}: nothing tracked"
        else:
            assert relative in tracked, f"{doc.name} links {target}, which git does not track (see .gitignore)"
