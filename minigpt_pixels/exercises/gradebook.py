"""What the class grader writes: the gradebook (one row per student and exercise), the per-student totals
an LMS imports, one feedback file per student, and the summary it prints.

Nothing a user saved is replaced: a gradebook or totals file is replaced only when it is one this
command wrote (its header), through a fresh temporary file in its folder (O_EXCL, so neither an existing
file nor a symlink of that name is ever opened) renamed over it, and removed on every failure; a feedback
file is replaced only when it starts with this command's own first line, and otherwise the student's file
gets another name. Cells that a spreadsheet would read as a formula (=, +, -, @, tab, CR first) get a
leading apostrophe, as OWASP recommends for CSV injection.
"""

import csv
import dataclasses
import io
import os
import pathlib
import tempfile

COLUMNS = ("student", "notebook", "exercise", "status", "points", "max_points", "message", "seed")
FEEDBACK_HEAD = "Feedback for "  # the first line of every feedback file this command writes
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclasses.dataclass
class Row:
    student: str
    notebook: str
    exercise: str
    status: str
    points: float
    max_points: float
    message: str  # the full message; the CSV gets its summary lines

    def csv_row(self, seed):
        return [self.student, self.notebook, self.exercise, self.status, f"{self.points:g}", f"{self.max_points:g}",
                summary(self.message), str(seed)]


def summary(message):
    """The lines of a message that are not indented detail (value listings, code lines), joined."""
    return " ".join(line.strip() for line in message.splitlines() if line and not line.startswith(" "))


def neutralise(cell):
    """A CSV cell a spreadsheet will not run: a leading apostrophe before a formula's first character."""
    cell = str(cell)
    return "'" + cell if cell.startswith(FORMULA_START) else cell


def readable(name):
    """A file or folder name as text that can be written anywhere: bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


# ---- files ------------------------------------------------------------------------------------------------
class Output:
    """A file this command may write at `path`, checked now (before any grading): its folder exists or can be
    made and takes a new file, and `path` is absent or a file of ours (`ours(first line)` is true).
    `write(text)` replaces it atomically at the end."""

    def __init__(self, path, ours, what):
        self.path, self.ours, self.what = pathlib.Path(path), ours, what
        if self.path.is_dir():
            raise ValueError(f"{what} {self.path} is a folder; give a file name")
        if self.path.exists() or self.path.is_symlink():
            if self.path.is_symlink() or not self._ours():
                raise ValueError(f"{what} {self.path} exists and is not a file this command wrote; choose another")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as e:
            raise ValueError(f"{what} {self.path} cannot be written ({e.strerror or e})") from None
        os.close(fd)
        os.unlink(probe)

    def _ours(self):
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                return self.ours(f.readline().rstrip("\r\n"))
        except (OSError, UnicodeDecodeError):
            return False

    def write(self, text):
        replace_file(self.path, text)


def replace_file(path, text):
    """Write `text` through a fresh temporary file in the same folder (O_EXCL), renamed over `path`; the
    temporary file is removed on any failure (a full disk included)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _csv(rows):
    out = io.StringIO()
    w = csv.writer(out)
    for row in rows:
        w.writerow([neutralise(c) for c in row])
    return out.getvalue()


def gradebook_csv(rows, seed):
    return _csv([COLUMNS] + [r.csv_row(seed) for r in rows])


def totals_header(notebooks):
    return ("student",) + tuple(notebooks) + ("total", "max_points", "seed")


def is_gradebook_header(line):
    return line in (",".join(COLUMNS), ",".join(COLUMNS[:-1]))  # this version's, or the one before the seed column


def is_totals_header(line):
    return line.startswith("student,") and line.endswith(",total,max_points,seed")


def totals_csv(rows, seed):
    """One row per student: points per notebook, the total, the maximum, and the seed."""
    notebooks = sorted({r.notebook for r in rows})
    table = [totals_header(notebooks)]
    for student in sorted({r.student for r in rows}):
        mine = [r for r in rows if r.student == student]
        per = [f"{sum(r.points for r in mine if r.notebook == nb):g}" for nb in notebooks]
        table.append((student, *per, f"{sum(r.points for r in mine):g}", f"{sum(r.max_points for r in mine):g}",
                      str(seed)))
    return _csv(table)


def feedback_folder(folder):
    """Check `--feedback` before grading: a folder (made if missing) that takes new files."""
    folder = pathlib.Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--feedback {folder} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe.", suffix=".tmp")
    except OSError as e:
        raise ValueError(f"--feedback {folder} cannot be written ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)
    return folder


def write_feedback(folder, rows):
    """One text file per student with every message in full, "Likely mistake" included. -> [notes]: names
    that collided (a suffix was added) and files of someone else's that were kept (another name was used)."""
    folder, notes, taken = pathlib.Path(folder), [], set()
    by_student = {}
    for r in rows:
        by_student.setdefault(r.student, []).append(r)
    for student, mine in sorted(by_student.items()):
        base = _safe_name(student)
        name, n = base, 1
        while name.lower() in taken or not _ours_or_free(folder / f"{name}.txt"):
            if name.lower() not in taken:
                notes.append(f"{folder / (name + '.txt')} was not written by this command and was kept")
            n += 1
            name = f"{base}-{n}"
        if name != base:
            notes.append(f"feedback for {student!r} is in {name}.txt ({base}.txt was taken)")
        taken.add(name.lower())
        replace_file(folder / f"{name}.txt", _feedback_text(student, mine))
    return notes


def _ours_or_free(path):
    if path.is_symlink():
        return False
    if not path.exists():
        return True
    try:
        with open(path, encoding="utf-8") as f:
            return path.is_file() and f.readline().startswith(FEEDBACK_HEAD)
    except (OSError, UnicodeDecodeError):
        return False


def _feedback_text(student, mine):
    icons = {"passed": "[passed]", "failed": "[failed]", "not done": "[not done]"}
    total, top = sum(r.points for r in mine), sum(r.max_points for r in mine)
    lines = [f"{FEEDBACK_HEAD}{student}: {total:g} of {top:g} points", ""]
    for r in mine:
        lines.append(f"{icons.get(r.status, r.status)} {r.notebook} / {r.exercise}: {r.points:g} of "
                     f"{r.max_points:g} points")
        lines += ["    " + line for line in r.message.splitlines()] + [""]
    return "\n".join(lines)


def _safe_name(name):
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).lstrip(".") or "student"


def summary_table(rows, exercise_order):
    """Per exercise: how many passed, failed, not done, and the mean points; then each student's total."""
    out = [f"{'exercise':24s} {'passed':>7s} {'failed':>7s} {'not done':>9s} {'mean points':>12s}"]
    for n in [n for n in exercise_order if any(r.exercise == n for r in rows)]:
        mine = [r for r in rows if r.exercise == n]
        count = {s: sum(r.status == s for r in mine) for s in ("passed", "failed", "not done")}
        mean = sum(r.points for r in mine) / len(mine)
        out.append(f"{n:24s} {count['passed']:7d} {count['failed']:7d} {count['not done']:9d} "
                   f"{mean:7.2f} of {mine[0].max_points:g}")
    out.append("")
    students = sorted({r.student for r in rows})
    width = max([24] + [len(s) for s in students])
    out.append(f"{'student':{width}s} {'points':>12s}")
    for student in students:
        mine = [r for r in rows if r.student == student]
        out.append(f"{student:{width}s} {sum(r.points for r in mine):6g} of {sum(r.max_points for r in mine):g}")
    return "\n".join(out)


__all__ = ["COLUMNS", "Row", "Output", "summary", "neutralise", "readable", "gradebook_csv", "totals_csv",
           "totals_header", "is_gradebook_header", "is_totals_header", "replace_file", "feedback_folder",
           "write_feedback", "summary_table"]
