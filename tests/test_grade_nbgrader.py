"""nbgrader itself accepts the exercise notebooks: from the teacher's notebook (built from
notebooks/src/exercises/), `generate_assignment` releases exactly the student notebook we ship, and
`autograde` scores a filled-in copy: the right answer gets the exercise's points, the wrong one none.
Our grader, in its sandbox, gives every row the same points as nbgrader's autograde: on that copy, and on
a student of an honest class (one of its 30 here; all 30, timed with --jobs 1 and 2, with
MINIGPT_PIXELS_CLASS_OF_30=1)."""

import csv
import json
import os
import pathlib
import sys
import time

import pytest

pytest.importorskip("nbgrader")
pytest.importorskip("ipykernel")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import build_notebooks  # noqa: E402

from minigpt_pixels.exercises import grade  # noqa: E402

from .grade_submissions import honest_class, sandbox_flags  # noqa: E402

NAME = "01_layer_norm_and_quick_gelu"  # the quickest exercise notebook to execute
STUB = "# YOUR CODE HERE\n    raise NotImplementedError()"


def _nbgrader_meta(cell):
    meta = dict(cell["metadata"].get("nbgrader", {}))
    meta.pop("checksum", None)  # nbgrader's own bookkeeping, recomputed at autograde
    return meta


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Object of type")  # nbgrader's own SQLAlchemy session notices
def test_nbgrader_releases_our_notebook_and_our_sandboxed_grader_gives_its_autograde_points(tmp_path):
    from nbgrader.api import Gradebook
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    assert build_notebooks.write_course(tmp_path) == 0
    config = Config()
    config.CourseDirectory.root = str(tmp_path)
    config.CourseDirectory.course_id = "minigpt_pixels"
    config.Exchange.root = str(tmp_path / "exchange")
    api = NbGraderAPI(config=config)

    result = api.generate_assignment(NAME)
    assert result["success"], result.get("error") or result.get("log")
    release = json.loads((tmp_path / "release" / NAME / f"{NAME}.ipynb").read_text())
    shipped = json.loads((ROOT / "notebooks" / "exercises" / f"{NAME}.ipynb").read_text())
    assert [("".join(c["source"]), _nbgrader_meta(c)) for c in release["cells"]] == \
        [("".join(c["source"]), _nbgrader_meta(c)) for c in shipped["cells"]]

    for cell in release["cells"]:  # the student: layer_norm right, quick_gelu wrong (ReLU)
        if _nbgrader_meta(cell).get("grade_id") == "layer_norm":
            cell["source"] = "".join(cell["source"]).replace(
                STUB, "return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight")
        if _nbgrader_meta(cell).get("grade_id") == "quick_gelu":
            cell["source"] = "".join(cell["source"]).replace(STUB, "return np.maximum(x, 0)")
    submitted = tmp_path / "submitted" / "alice" / NAME / f"{NAME}.ipynb"
    submitted.parent.mkdir(parents=True)
    submitted.write_text(json.dumps(release))

    students = honest_class()
    if os.environ.get("MINIGPT_PIXELS_CLASS_OF_30") != "1":  # a right answer with helper cells (alice: a mistake)
        students = {"student07": students["student07"]}
    students["alice"] = release
    for student, nb in students.items():
        path = tmp_path / "submitted" / student / NAME / f"{NAME}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(nb))
        result = api.autograde(NAME, student)
        assert result["success"], result.get("error") or result.get("log")
    theirs = {}
    with Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}") as gb:
        for student in students:
            for nb in gb.find_submission(NAME, student).notebooks:
                theirs.update({(student, g.name): (g.score, g.max_score) for g in nb.grades})
    assert {k[1]: v for k, v in theirs.items() if k[0] == "alice"} == {
        "check_layer_norm": (2.0, 2.0), "check_quick_gelu": (0.0, 1.0)}
    assert len({score for score, _ in theirs.values()}) > 1  # full and partial marks

    # our grader, in its sandbox where bwrap runs: the same points on every row
    theirs = {(student, name.removeprefix("check_")): score for (student, name), (score, _) in theirs.items()}
    for jobs in (1, 2):
        start = time.perf_counter()
        assert ours(tmp_path / "submitted", tmp_path / f"ours{jobs}.csv", jobs) == theirs
        print(f"[grade] {len(students)} students, --jobs {jobs}: {time.perf_counter() - start:.1f} s")


def ours(submitted, out, jobs):
    """{(student, exercise): points} from our grader."""
    assert grade.main([str(submitted), "--out", str(out), "--no-progress", "--jobs", str(jobs)]
                      + sandbox_flags()) == 0
    with open(out, newline="", encoding="utf-8") as f:
        return {(r["student"], r["exercise"]): float(r["points"]) for r in csv.DictReader(f)}
