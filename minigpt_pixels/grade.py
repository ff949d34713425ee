"""`python -m minigpt_pixels.grade`: the class grader, which lives beside the exercises
(minigpt_pixels/exercises/grade.py; also the `minigpt-pixels-grade` command)."""

import sys

from .exercises.grade import main

if __name__ == "__main__":
    sys.exit(main())
