"""The README's tables of the paper's probe are what `python -m minigpt_pixels.probe` prints with --markdown,
from the --json files it wrote under docs/images/ (never typed by hand), and a fresh run of the command
reproduces the default model's (to one test image per fold: another BLAS may flip an image on the boundary;
the other two take minutes, and tests/test_probe_middle_peak.py recomputes the middle-peak one independently)."""

import json
import pathlib

import pytest

from minigpt_pixels.probe.cli import main, markdown_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TABLES = {  # --json file -> the command that made it (as the README shows it)
    "probe_default_paper.json": ["--model", "minigpt_pixels/data/default_model", "--data", "digits"],
    "probe_shifted_paper.json": ["--model", "minigpt_pixels/data/shifted_digits_model", "--data", "shifted-digits"],
    "probe_middle_peak_paper.json": ["--model", "minigpt_pixels/data/middle_peak_model", "--data", "middle-peak"],
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_the_readme_shows_the_cli_s_table_and_command(name):
    report = json.loads((ROOT / "docs" / "images" / name).read_text())
    readme_lines = {line.strip() for line in README.splitlines()}  # the README indents it inside a list
    missing = [line for line in markdown_table(report).splitlines() if line.strip() not in readme_lines]
    assert not missing, f"paste `python -m minigpt_pixels.probe ... --markdown` for {name}: {missing[0]}"
    command = "python -m minigpt_pixels.probe " + " ".join(TABLES[name])
    assert command in README
    assert [report["model"], report["data"]] == TABLES[name][1::2] and report["features"] == "paper"


def rerun(name, tmp_path):
    stored = json.loads((ROOT / "docs" / "images" / name).read_text())
    out = tmp_path / "probe.json"
    assert main([*(a if not a.startswith("minigpt_pixels/") else str(ROOT / a) for a in TABLES[name]),
                 "--jobs", "-1", "--json", str(out)]) == 0  # --jobs changes the time, not the numbers
    fresh = json.loads(out.read_text())
    one_image = 1 / (stored["n_images"] // stored["folds"])
    for curve in ("trained", "untrained", "raw pixels", "raw pixels, pooled"):
        assert fresh[curve]["mean"] == pytest.approx(stored[curve]["mean"], abs=one_image), curve


@pytest.mark.slow
def test_the_cli_reproduces_the_default_model_s_table(tmp_path):
    rerun("probe_default_paper.json", tmp_path)
