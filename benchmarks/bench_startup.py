"""What a user waits for: the main job, and the time from `import` to the first sampled token.

    python benchmarks/bench_startup.py                  # the main job and the default model (about 1 min)
    python benchmarks/bench_startup.py --igpt-s         # also iGPT-S (random weights, written once to a temp dir)

Every run is a fresh Python process, as a user's is. Each device's first run gets a fresh, empty Numba
cache (NUMBA_CACHE_DIR in a temp dir: the kernels compile, as on a first run after installing); later
runs reuse it (the kernels load). Runs of the devices alternate, medians reported.

- the main job: `python -m minigpt_pixels.sample --no-progress` (16 samples of the default model), wall
  time of the whole process, the default device ("auto", which picks "numpy" for a model this small),
  "cpu" (the Numba kernels asked for by name) and "numpy";
- import to first token: from before `import minigpt_pixels` to the first sampled token (one
  unconditional sequence: loading the model, then its first step), inside the process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

FIRST_TOKEN = textwrap.dedent("""
    import time
    start = time.perf_counter()
    import sys
    import numpy as np
    from minigpt_pixels.model import ImageGPTForCausalImageModeling
    model = ImageGPTForCausalImageModeling.from_pretrained(sys.argv[1]).to(sys.argv[2])
    model.generate(np.full((1, 1), model.config.vocab_size - 1), max_new_tokens=1, do_sample=True, seed=0)
    print(time.perf_counter() - start)
""")


def timed_process(args, env):
    """Wall seconds of a fresh Python process running `args`, and its stdout."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(args[:3])} failed:\n{done.stderr}")
    return seconds, done.stdout


def compare(label, command, repeats, workdir, devices=("auto", "cpu", "numpy")):
    """command(device, env) -> seconds for each device: a first run each with an empty cache, then
    `repeats` alternating runs with the cache the first run filled; ratios against the last device."""
    env = {d: dict(os.environ, NUMBA_CACHE_DIR=tempfile.mkdtemp(prefix=f"numba-cache-{d}-", dir=workdir))
           for d in devices}
    first = {d: command(d, env[d]) for d in devices}
    later = {d: [] for d in devices}
    for _ in range(repeats):
        for d in devices:
            later[d].append(command(d, env[d]))
    median = {d: statistics.median(later[d]) for d in devices}
    base = devices[-1]
    print(label)
    for name, times in (("first run (empty cache)", first), (f"later runs ({repeats}, medians)", median)):
        print(f"  {name:28s}" + "   ".join(f"{d} {times[d]:6.2f} s" for d in devices) + "   ratio to "
              + base + ": " + ", ".join(f"{d} {times[d] / times[base]:.2f}" for d in devices[:-1]))
    print("  later runs' ranges: " + ", ".join(f"{d} {min(later[d]):.2f}-{max(later[d]):.2f}" for d in devices))
    sys.stdout.flush()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each device after the first")
    ap.add_argument("--igpt-s", action="store_true", help="also time import to first token for iGPT-S")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")

    import minigpt_pixels

    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory() as workdir:
        out = os.path.join(workdir, "samples.png")

        def main_job(device, env):
            return timed_process(["-m", "minigpt_pixels.sample", "--no-progress", "--force", "--out", out,
                                  "--device", device], env)[0]

        def first_token(model_dir):
            return lambda device, env: float(timed_process(["-c", FIRST_TOKEN, model_dir, device], env)[1])

        compare("the main job: python -m minigpt_pixels.sample (16 samples, 8x8), whole process; --device "
                "auto (the default), cpu, numpy", main_job, args.repeats, workdir)
        compare("import to first token, default model", first_token(minigpt_pixels.DEFAULT_MODEL), args.repeats,
                workdir)
        if args.igpt_s:
            from minigpt_pixels.config import ImageGPTConfig
            from minigpt_pixels.model import ImageGPTForCausalImageModeling

            igpt_s = os.path.join(workdir, "igpt-s")
            ImageGPTForCausalImageModeling(ImageGPTConfig.igpt_s(), seed=0).save_pretrained(igpt_s)
            compare("import to first token, iGPT-S (76M parameters, memory-mapped)", first_token(igpt_s),
                    args.repeats, workdir, devices=("auto", "numpy"))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
