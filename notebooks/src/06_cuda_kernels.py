# %% [markdown]
# # 6. The Numba CUDA kernels: a tiled matmul and fused attention
#
# > **The paper.** Chen, Radford, Child, Wu, Jun, Luan, Sutskever, *Generative Pretraining from Pixels*,
# > ICML 2020 ([PDF](https://cdn.openai.com/papers/Generative_Pretraining_from_Pixels_V2.pdf)). Its
# > models are large (notebook 2's table: iGPT-S has L = 24 layers of width d = 512 over 1024 positions,
# > iGPT-XL 6.8B parameters), and almost all of their time goes to two operations: matrix multiplies
# > and attention over every pair of positions. This notebook shows how each is made fast on a GPU.
#
# `model.to("cuda")` runs the forward pass with the kernels in `minigpt_pixels/kernels/cuda.py`, written
# in Python with Numba's `@cuda.jit`. This notebook explains the two that matter most, the tiled
# matrix multiply and the fused causal attention, and checks both against the NumPy reference in
# `layers.py`.
#
# **No GPU? No problem.** Numba ships a CUDA *simulator*: with the environment variable
# `NUMBA_ENABLE_CUDASIM=1` it runs every CUDA thread as a Python thread on the CPU, with the same
# indexing, shared memory, `syncthreads` barriers and bounds checks (an out-of-range index raises,
# where a real GPU would silently read garbage). It is thousands of times slower, so we use small
# tiles and small matrices, but the kernels are the very same code. The variable is read when numba is
# first imported, so it must be set **before** importing numba or `minigpt_pixels` (which imports it).

# %%
import os
import subprocess
import sys

# Ask a fresh Python, with the simulator off, whether numba sees a real GPU (this process must not
# import numba before deciding).
probe = subprocess.run([sys.executable, "-c", "from numba import cuda; print(cuda.is_available())"],
                       capture_output=True, text=True, env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"})
HAS_GPU = probe.stdout.strip() == "True"
# Before numba is imported (below, via minigpt_pixels); set either way, so that a value inherited
# from the environment (the test suite simulates everything) cannot override what we found.
os.environ["NUMBA_ENABLE_CUDASIM"] = "0" if HAS_GPU else "1"
print("running on a real GPU" if HAS_GPU else "no GPU found: using Numba's CUDA simulator")

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from threadpoolctl import threadpool_info

from numba import cuda

from minigpt_pixels import layers
from minigpt_pixels.kernels import cuda as K

rng = np.random.default_rng(0)
THREADS = max([pool["num_threads"] for pool in threadpool_info()] or [1])  # BLAS threads NumPy runs on here
TIMED_ON = f"timed on {THREADS} thread{'s' * (THREADS > 1)}"  # the notebook tests skip lines that say this

# %% [markdown]
# ## The tiled matmul
#
# A GPU runs thousands of threads in **blocks**; the threads of a block share a small, fast
# **shared memory**. The naive kernel gives each thread one output element and has it read a whole row
# of `A` and column of `B` from slow global memory: `2K` loads for `K` multiply-adds. The tiled kernel
# gives each block a `bm x bn` tile of the output. It walks along `K` in steps of `bk`: the block's
# threads copy a `bm x bk` slice of `A` and a `bk x bn` slice of `B` into shared memory (each element
# read once), `syncthreads()`, then every thread multiplies from shared memory into registers,
# `syncthreads()` again before the next slices overwrite them. Each thread also owns a small `tm x tn`
# sub-tile, so each value loaded from shared memory is reused `tm` or `tn` times.

# %%
M, K_, N, bm, bn, bk = 40, 24, 36, 16, 16, 4  # the sizes used below
side = max(M, K_, N) + 1  # one scale for all three panels: a cell of A is as big as a cell of B or C
fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
for ax, (name, h, w) in zip(axes, [("A  [M, K]", M, K_), ("B  [K, N]", K_, N), ("C = A @ B  [M, N]", M, N)]):
    ax.add_patch(Rectangle((0, 0), w, h, fill=False))
    ax.set_xlim(-1, side); ax.set_ylim(side, -1); ax.set_aspect("equal"); ax.set_title(f"{name} = {h} x {w}")
    ax.set_xlabel("column"); ax.set_ylabel("row"); ax.set_xticks([0, w]); ax.set_yticks([0, h])
by, bx = 1, 1  # the block computing tile (1, 1) of C
for k0, shade in zip(range(0, K_, bk), np.linspace(0.25, 0.9, -(-K_ // bk))):
    axes[0].add_patch(Rectangle((k0, by * bm), bk, bm, color=plt.cm.Blues(shade)))  # A's slice at step k0
    axes[1].add_patch(Rectangle((bx * bn, k0), bn, bk, color=plt.cm.Oranges(shade)))  # B's slice
for r in range(0, M, bm):
    for c in range(0, N, bn):
        axes[2].add_patch(Rectangle((c, r), bn, bm, fill=False, ls=":", color="gray"))
axes[2].add_patch(Rectangle((bx * bn, by * bm), bn, bm, color="green", alpha=0.6))
fig.suptitle(f"one block: its {bm} x {bn} tile of C (green) from {-(-K_ // bk)} slices of A and B, darker = later step k0")
plt.tight_layout()
plt.show()

# %% [markdown]
# The launch: a grid of `ceil(N / bn) x ceil(M / bm)` blocks, `(bm / tm) * (bn / tn)` threads each. The
# edges are the classic bug: `M`, `N` and `K` need not be multiples of the tile, so every load is
# guarded (out-of-range elements are loaded as 0) and every store checks its row and column. The sizes
# here are deliberately not multiples. Small tiles for the simulator; the defaults on a GPU are
# `MatmulTiles()` (128 x 128 tiles, 8 x 8 per thread).
#
# Shared memory holds one `bk x (bm + 4)` slice of A and one `bk x bn` slice of B, float32 (4 bytes):
# `4 * bk * (bm + 4 + bn)` bytes. The **+4** is padding: A's slice is stored transposed, and four
# extra columns per row shift consecutive rows onto different shared-memory banks, so a warp's
# transposing stores do not queue on one bank (`kernels/cuda.py`, `a_width = bm + 4`).

# %%
tiles = K.MatmulTiles(bm=16, bn=16, bk=4, tm=2, tn=2)
a = rng.normal(size=(M, K_)).astype(np.float32)
b = rng.normal(size=(K_, N)).astype(np.float32)
grid = (-(-N // tiles.bn), -(-M // tiles.bm))
print(f"grid {grid} blocks x {tiles.threads} threads, shared memory "
      f"{4 * tiles.bk * (tiles.bm + 4 + tiles.bn)} bytes per block")

start = time.perf_counter()
c = K.matmul(a, b, tiles=tiles)  # the kernel (host arrays in, host array out)
print(f"kernel: {c.shape} {c.dtype} in {time.perf_counter() - start:.2f} s "
      f"({'GPU' if HAS_GPU else 'simulator'}, {TIMED_ON})")
print(f"max |kernel - layers.linear| = {np.abs(c - layers.linear(a, b)).max():.1e}")
assert np.allclose(c, a @ b, atol=1e-4)

# %% [markdown]
# How much global-memory traffic the tiles save, for iGPT-S's attention projection on one image
# (`M = 1024` positions, `K = 512`, `N = 3 x 512`) with the default 128 x 128 tiles:

# %%
M2, K2, N2, t = 1024, 512, 1536, K.MatmulTiles()
naive = 2 * M2 * N2 * K2  # every output reads a row of A and a column of B
tiled = M2 * K2 * (N2 // t.bn) + K2 * N2 * (M2 // t.bm)  # A read once per column of tiles, B once per row
print(f"naive: {naive * 4 / 1e9:.1f} GB of loads   tiled: {tiled * 4 / 1e6:.0f} MB   ({naive / tiled:.0f}x less)")

# %% [markdown]
# ## Fused causal attention
#
# The reference computes the full score matrix `[B, H, T, S]`, masks, softmaxes, and multiplies by `v`:
# at iGPT-S size that is, per image and **per layer**, 8 heads x 1024 x 1024 float32 scores (computed
# below), written and read back, and again in each of the 24 layers. The fused kernel never forms it. One thread owns one query row; the block streams the keys and values
# through shared memory `bkv` at a time, and keeps for its row a running maximum `m`, a running sum
# `l` of `exp(score - m)`, and a running weighted sum of values. When a new score beats `m`, what was
# accumulated so far is rescaled by `exp(m_old - m_new)`. This **online softmax** (the idea behind
# FlashAttention) gives the same result as the softmax over the whole row, shown here on one row:

# %%
score_bytes = 8 * 1024 * 1024 * 4  # iGPT-S: heads x queries x keys x 4 bytes
print(f"iGPT-S scores: {score_bytes / 2**20:.0f} MiB per image per layer, {24 * score_bytes / 2**20:.0f} MiB "
      f"per image over its 24 layers")

scores = rng.normal(size=10) * 3  # one row of scores
values = rng.normal(size=(10, 4))  # one value vector [D = 4] per key
m, l, acc = -np.inf, 0.0, np.zeros(4)
for chunk, v_chunk in zip(np.split(scores, [3, 7]), np.split(values, [3, 7])):  # three tiles of keys
    m_new = max(m, chunk.max())
    p = np.exp(chunk - m_new)  # this tile's weights, on the new max's scale
    l = l * np.exp(m - m_new) + p.sum()  # rescale what was summed, add the new tile
    acc = acc * np.exp(m - m_new) + p @ v_chunk  # the weighted sum of values, rescaled the same way
    m = m_new
weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()  # the whole row at once
print(f"online:  max {m:.4f}, sum {l:.6f}, output {np.round(acc / l, 6)}")
print(f"at once: max {scores.max():.4f}, sum {np.exp(scores - scores.max()).sum():.6f}, output {np.round(weights @ values, 6)}")
print(f"max |online output - softmax(scores) @ values| = {np.abs(acc / l - weights @ values).max():.1e}")

# %% [markdown]
# The kernel against `layers.attention`, first on a full sequence, then with a KV cache (the queries are
# the last 5 of 23 positions, so query `t` sees keys `0 .. 18 + t`), then the one-query decode kernel
# used when sampling:

# %%
att_tiles = K.AttentionTiles(bq=8, bkv=4)
q, k, v = rng.normal(size=(3, 1, 2, 20, 8)).astype(np.float32)  # [B, H, T, D]
scale = layers.attention_scale(8)
out = K.causal_attention(q, k, v, scale, tiles=att_tiles)
print(f"full sequence:  max |kernel - reference| = {np.abs(out - layers.attention(q, k, v, scale)[0]).max():.1e}")

k2, v2 = rng.normal(size=(2, 1, 2, 23, 8)).astype(np.float32)  # 23 keys, 5 new queries
q2 = q[:, :, :5]
out = K.causal_attention(q2, k2, v2, scale, tiles=att_tiles)
print(f"with a cache:   max |kernel - reference| = {np.abs(out - layers.attention(q2, k2, v2, scale)[0]).max():.1e}")

out = K.decode_attention(q[:, :, :1], k2, v2, length=13, scale=scale, tiles=K.DecodeTiles(threads=16, chunk=8))
reference = layers.attention(q[:, :, :1], k2[:, :, :13], v2[:, :, :13], scale)[0]
print(f"decode step:    max |kernel - reference| = {np.abs(out - reference).max():.1e}")

# %% [markdown]
# ## On a real GPU: speed
#
# **Untested:** the cell below has not yet run on a GPU (the suite runs the simulator only), so read
# it as a recipe until its output shows a GPU's numbers. Under the simulator timings mean nothing (and
# a whole model takes minutes), so it runs only on a GPU. GPU launches are asynchronous, so each
# timing synchronises before it stops the clock and takes the best of several runs after a warm-up
# (the first call compiles); the data stays on the device, and NumPy on the CPU is timed on the
# printed thread count.

# %%
def best_of(fn, repeats=10, gpu=True):
    """The fastest of `repeats` runs after one untimed warm-up run, each synchronised with the GPU."""
    sync = cuda.synchronize if gpu else (lambda: None)
    fn(); sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - start)
    return min(times)


if HAS_GPU:
    from minigpt_pixels import DEFAULT_MODEL
    from minigpt_pixels.model import ImageGPTForCausalImageModeling

    a, b = rng.normal(size=(2, 2048, 2048)).astype(np.float32)
    da, db = K.to_device(a), K.to_device(b)
    gpu = best_of(lambda: K.matmul(da, db))
    cpu = best_of(lambda: a @ b, repeats=3, gpu=False)
    print(f"2048^3 matmul: GPU kernel {gpu * 1000:.1f} ms (best of 10, synchronised); NumPy on the CPU "
          f"{cpu * 1000:.1f} ms (best of 3, {TIMED_ON})")

    model = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)
    ids = np.random.default_rng(0).integers(0, 16, size=(256, 64))
    reference = model.to("cpu")(ids).logits  # the Numba CPU kernels, by name ("auto" would pick numpy here)
    model.to("cuda")
    gpu = best_of(lambda: model(ids).logits)
    logits = model(ids).logits
    print(f"default model, 256 images: cuda {gpu * 1000:.1f} ms (best of 10, host arrays in and out; {TIMED_ON}), "
          f"max |cuda - cpu| = {np.abs(logits - reference).max():.1e}")
else:
    print("no GPU: timings skipped (the simulator is for correctness, not speed)")

# %% [markdown]
# **Summary.** Both kernels mirror a `layers.py` function (same arguments, same result, float32), carry
# their launch configuration and memory traffic in a header comment, guard every bound, and are checked
# against the reference, here and in `tests/test_kernels_cuda.py` under the simulator. Next:
# `07_likelihood.ipynb`.
#
# ## Questions and things to try
#
# 1. Change `M, K_, N` to multiples of the tile (48, 24, 48): which guards in the kernel stop mattering?
#    Then make them odd (41, 23, 37): does the check still pass?
# 2. From the traffic formula, how much less global memory does a 64 x 64 tile save than a 128 x 128 one?
# 3. In the online softmax, split the row into one tile, then into ten: do the output and sum change?
# 4. Why does one thread per query row suit causal attention less well than it seems (think of row 0
#    and row 1023)?
# 5. Why does a GPU timing need `synchronize()` before the clock stops?
#
# <details><summary>Answers (for the teacher)</summary>
#
# 1. With exact multiples the bounds checks never trigger; with odd sizes the guarded loads and stores
#    keep the result right.
# 2. Half as much: each operand is re-read once per tile column (or row), so halving the tile doubles
#    the re-reads.
# 3. No (up to rounding): rescaling by exp(m_old - m_new) makes any split give the softmax of the row.
# 4. Row t attends to t + 1 keys, so early rows finish at once and late rows do most of the work:
#    the threads of a block are unevenly loaded.
# 5. Kernel launches return at once; without synchronising, the clock measures the launch, not the work.
# </details>
