"""nbgrader itself accepts the exercise notebooks: from the teacher's notebook (built from
notebooks/src/exercises/), `generate_assignment` releases exactly the student notebook we ship, and
`autograde` scores a filled-in copy: the right answer gets the exercise's points, the wrong one none."""

import json
import pathlib
import sys

import pytest

pytest.importorskip("nbgrader")
pytest.importorskip("ipykernel")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import build_notebooks  # noqa: E402

NAME = "01_layer_norm_and_quick_gelu"  # the quickest exercise notebook to execute
STUB = "# YOUR CODE HERE\n    raise NotImplementedError()"


def _nbgrader_meta(cell):
    meta = dict(cell["metadata"].get("nbgrader", {}))
    meta.pop("checksum", None)  # nbgrader's own bookkeeping, recomputed at autograde
    return meta


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Object of type")  # nbgrader's own SQLAlchemy session notices
def test_nbgrader_releases_our_student_notebook_and_autogrades_a_filled_in_copy(tmp_path):
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

    result = api.autograde(NAME, "alice")
    assert result["success"], result.get("error") or result.get("log")
    with Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}") as gb:
        submission = gb.find_submission(NAME, "alice")
        scores = {g.name: (g.score, g.max_score) for nb in submission.notebooks for g in nb.grades}
    assert scores == {"check_layer_norm": (2.0, 2.0), "check_quick_gelu": (0.0, 1.0)}
