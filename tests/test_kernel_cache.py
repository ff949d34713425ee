"""Compiled kernels persist across runs (kernels/compile_cache.py): a second process loads them from
Numba's on-disk cache instead of compiling them, and an edit of any kernel file recompiles them.

Each run is a fresh Python process with NUMBA_CACHE_DIR pointing into tmp_path, so the test sees
neither the user's cache nor the package's __pycache__.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

import minigpt_pixels

pytestmark = pytest.mark.slow  # each process pays Numba's start-up, the first one its compiling

# The default model's kernels on the "cpu" device (asked for by name: "auto" runs a model this small on
# "numpy", without Numba), greedy, batch 2, plus one parallel=True kernel; prints how many kernel
# signatures were compiled and how many were loaded from the cache.
MAIN_JOB = textwrap.dedent("""
    import io, json
    import numba
    import numpy as np
    import minigpt_pixels
    from minigpt_pixels.kernels import compile_cache, cpu_loops, simd
    from minigpt_pixels.model import ImageGPTForCausalImageModeling

    said = io.StringIO()
    with compile_cache.compiling_notice(said):
        model = ImageGPTForCausalImageModeling.from_pretrained(minigpt_pixels.DEFAULT_MODEL).to("cpu")
        ids = model.generate(np.full((2, 1), model.config.vocab_size - 1), max_new_tokens=4)
        product = simd.small_matmul(np.ones((2, 8), np.float32), np.ones((8, 16), np.float32), 2)
    kernels = [d for module in (cpu_loops, simd) for d in vars(module).values()
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


# Two modules in one directory, b's kernel calling a's: the case of cpu_loops.py's decode kernels, which have
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


# ---- the cache never stops a kernel --------------------------------------------------------------
# A tiny forward and greedy decode on the "cpu" device, checked against the "numpy" device; prints what
# the kernels did. (ALL_PATHS below also sends the tiny model down the fused decode step and simd's matmul,
# whose parallel kernels take long to compile.)
TINY_CPU_JOB = textwrap.dedent("""
    import json
    import numpy as np
    from minigpt_pixels.config import ImageGPTConfig
    from minigpt_pixels.kernels import cpu_loops
    from minigpt_pixels.model import ImageGPTForCausalImageModeling

    config = ImageGPTConfig(vocab_size=17, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    model = ImageGPTForCausalImageModeling(config)
    ids = np.random.default_rng(0).integers(0, 16, (2, 8))
    start = np.full((2, 1), 16)
    reference = model(ids).logits, model.generate(start, max_new_tokens=4, do_sample=False)
    model.to("cpu")
    logits, generated = model(ids).logits, model.generate(start, max_new_tokens=4, do_sample=False)
    kernels = [d for d in vars(cpu_loops).values() if hasattr(d, "stats")]
    print(json.dumps(dict(
        worst=float(np.abs(logits - reference[0]).max()), same_ids=bool((generated == reference[1]).all()),
        jit=len(kernels), compiled=sum(sum(k.stats.cache_misses.values()) for k in kernels),
        loaded=sum(sum(k.stats.cache_hits.values()) for k in kernels))))
""")


def run_job(code, env, cwd=None):
    """(the JSON line the code prints, its stderr) of a fresh process with exactly `env`."""
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def damage(cache_dir):
    """Every cache file made empty, truncated or garbage in turn: what a crash mid-write leaves."""
    files = sorted(p for p in cache_dir.rglob("*") if p.suffix in (".nbi", ".nbc"))
    assert files
    for i, path in enumerate(files):
        data = path.read_bytes()
        path.write_bytes([b"", data[: len(data) // 2], b"garbage\x00" * 10][i % 3])
    return files


def test_damaged_cache_files_are_deleted_and_recompiled_with_one_warning(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    first, _ = run_job(TINY_CPU_JOB, env)
    assert first["worst"] < 1e-5 and first["same_ids"] and first["compiled"] > 0
    damage(tmp_path / "numba-cache")

    second, err = run_job(TINY_CPU_JOB, env)
    assert second["worst"] < 1e-5 and second["same_ids"], second
    assert second["compiled"] == first["compiled"], "every damaged kernel compiled again"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: damaged Numba cache file(s)"), err
    assert "deleted" in lines[0] and "compiling again" in lines[0]

    third, err = run_job(TINY_CPU_JOB, env)  # the fresh entries written in their place load
    assert third["compiled"] == 0 and third["loaded"] > 0 and err == "", (third, err)


def test_no_writable_cache_location_runs_the_kernels_uncached_with_one_warning(tmp_path):
    """Numba looks in NUMBA_CACHE_DIR, the __pycache__ beside the source, then ~/.cache (XDG_CACHE_HOME):
    each made impossible here (a path below a plain file cannot be a folder, as root too), on a copy of
    the package whose kernels/__pycache__ is a file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    copy = tmp_path / "copy"
    shutil.copytree(pathlib.Path(minigpt_pixels.__file__).parent, copy / "minigpt_pixels",
                    ignore=shutil.ignore_patterns("__pycache__", "data"))
    (copy / "minigpt_pixels" / "kernels" / "__pycache__").write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(PYTHONPATH=str(copy), HOME=str(blocker / "home"), XDG_CACHE_HOME=str(blocker / "cache"),
               PYTHONDONTWRITEBYTECODE="1")
    check = "import minigpt_pixels, json; print(json.dumps(minigpt_pixels.__file__))"
    assert run_job(check, env, cwd=tmp_path)[0].startswith(str(copy)), "the test must run the copy"

    result, err = run_job(TINY_CPU_JOB, env, cwd=tmp_path)
    assert result["worst"] < 1e-5 and result["same_ids"] and result["compiled"] > 0, result
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: no writable place for Numba's cache"), err
    assert "NUMBA_CACHE_DIR" in lines[0]


def test_numba_disable_jit_runs_the_kernels_as_python(tmp_path):
    """Numba's debugging switch: njit hands back the Python function and each intrinsic its Python twin,
    on every path of the "cpu" device (the thresholds set to 0 send the tiny model down the fused decode
    step and simd's matmul too)."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    all_paths = ("from minigpt_pixels.kernels import threads\n"
                 "threads.PARALLEL_MIN_WORK = threads.DECODE_PARALLEL_MIN_WORK = 0\n")
    matmul = textwrap.dedent("""
        from minigpt_pixels.kernels import simd
        a, w = np.ones((3, 40), np.float32), np.arange(40 * 24, dtype=np.float32).reshape(40, 24) / 100
        product = simd.small_matmul(a, w, 2)
        print(json.dumps(dict(matmul=float(np.abs(product - a @ w).max()), dtype=str(product.dtype))))
    """)
    done = subprocess.run([sys.executable, "-c", all_paths + TINY_CPU_JOB + matmul], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    forward, product = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert forward["worst"] < 1e-5 and forward["same_ids"] and forward["jit"] == 0, forward
    assert product["dtype"] == "float32" and product["matmul"] < 1e-4, product
    assert not (tmp_path / "numba-cache").exists(), "nothing compiled, nothing cached"
