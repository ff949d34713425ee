"""Compiled kernels persist across runs (kernels/compile_cache.py): a second process loads them from
Numba's on-disk cache instead of compiling them, and an edit of any kernel file recompiles them.

Each run is a fresh Python process with NUMBA_CACHE_DIR pointing into tmp_path, so the test sees
neither the user's cache nor the package's __pycache__.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # each process pays Numba's start-up, the first one its compiling

# The default model's kernels on the "cpu" device (asked for by name: "auto" runs a model this small on
# "numpy", without Numba), greedy, batch 2, plus one parallel=True kernel; prints how many kernel
# signatures were compiled and how many were loaded from the cache.
MAIN_JOB = textwrap.dedent("""
    import io, json
    import numba
    import numpy as np
    import minigpt_pixels
    from minigpt_pixels.kernels import compile_cache, cpu, simd
    from minigpt_pixels.model import ImageGPTForCausalImageModeling

    said = io.StringIO()
    with compile_cache.compiling_notice(said):
        model = ImageGPTForCausalImageModeling.from_pretrained(minigpt_pixels.DEFAULT_MODEL).to("cpu")
        ids = model.generate(np.full((2, 1), model.config.vocab_size - 1), max_new_tokens=4)
        product = simd.small_matmul(np.ones((2, 8), np.float32), np.ones((8, 16), np.float32), 2)
    kernels = [d for module in (cpu, simd) for d in vars(module).values()
               if isinstance(d, numba.core.registry.CPUDispatcher)]
    print(json.dumps(dict(
        compiled=sum(sum(k.stats.cache_misses.values()) for k in kernels),
        loaded=sum(sum(k.stats.cache_hits.values()) for k in kernels),
        said=said.getvalue(), ids=ids.tolist(), product=product.tolist())))
""")


def run_python(code, cache_dir, cwd=None):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_kernels_from_the_cache(tmp_path):
    cache_dir = tmp_path / "numba-cache"
    first = run_python(MAIN_JOB, cache_dir)
    assert first["compiled"] > 0 and first["loaded"] == 0, first
    assert first["said"] == "compiling the Numba kernels (once: later runs load them from the cache)\n"
    assert any(name.endswith(".nbc") for _, _, files in os.walk(cache_dir) for name in files)

    second = run_python(MAIN_JOB, cache_dir)
    assert second["compiled"] == 0, f"compiled {second['compiled']} kernel signatures again"
    assert second["loaded"] >= 5, second  # layer norms, attention, gelu, the matmuls: loaded, not compiled
    assert second["said"] == "", "a run that compiles nothing says nothing"
    assert second["ids"] == first["ids"] and second["product"] == first["product"]


# Two modules in one directory, b's kernel calling a's: the case of cpu.py's decode kernels, which have
# simd.py's matmul compiled into them.
MODULE_A = """
from minigpt_pixels.kernels.compile_cache import njit

@njit()
def step(x):
    return x + {increment}
"""
MODULE_B = """
from a import step
from minigpt_pixels.kernels.compile_cache import njit

@njit()
def twice_step(x):
    return 2 * step(x)
"""
CALL_B = """
import json, b
print(json.dumps(dict(value=b.twice_step(1), compiled=sum(b.twice_step.stats.cache_misses.values()),
                      loaded=sum(b.twice_step.stats.cache_hits.values()))))
"""


def test_editing_a_callee_in_another_file_recompiles_the_caller(tmp_path):
    """Numba's own cache checks a kernel against its own file only, and would run b's stale copy of a."""
    (tmp_path / "a.py").write_text(MODULE_A.format(increment=1))
    (tmp_path / "b.py").write_text(MODULE_B)
    cache_dir = tmp_path / "numba-cache"
    assert run_python(CALL_B, cache_dir, cwd=tmp_path) == dict(value=4, compiled=1, loaded=0)
    assert run_python(CALL_B, cache_dir, cwd=tmp_path) == dict(value=4, compiled=0, loaded=1)
    (tmp_path / "a.py").write_text(MODULE_A.format(increment=2))  # b.py itself is unchanged
    assert run_python(CALL_B, cache_dir, cwd=tmp_path) == dict(value=6, compiled=1, loaded=0)


def test_the_main_job_says_once_that_it_compiles_and_numpy_never_loads_numba(tmp_path):
    """`python -m minigpt_pixels.sample --device cpu`: the first run says in one line that it compiles, the
    second says nothing more than the first minus that line; the default device on the default model
    ("auto" -> "numpy") never imports Numba, so it has nothing to say."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))

    def job(*args):
        done = subprocess.run([sys.executable, "-m", "minigpt_pixels.sample", "--no-progress", "--force", "--out",
                               str(tmp_path / "s.png"), "--num-samples", "2", *args], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stderr, done.stdout

    first_err, first_out = job("--device", "cpu")
    assert first_err.count("compiling the Numba kernels") == 1 and "on cpu" in first_out, first_err
    second_err, _ = job("--device", "cpu")
    assert "compiling" not in second_err, second_err
    auto_err, auto_out = job()
    assert "compiling" not in auto_err and "on numpy (auto)" in auto_out
