"""The "cpu" device's thread policy, apart from its kernels: which sections run on several threads, the
pool they run on, and the clock that decides from timings whether a second thread pays.

    workers_for / split / in_parallel   a full forward's sections (matmul rows, heads, gelu rows) shared
                                        among Python threads that each call BLAS single-threaded
    blas_controller                     threadpoolctl's handle on NumPy's BLAS (None without threadpoolctl)
    blas_threads_for                    BLAS held to one thread around a pass where our threads share the work
    at_most                             every library's threads held to n (train's --threads, train.set_threads)
    decode_threads / fused_step_threads a decode step's sections, and a whole fused step, on Numba's threads
                                        or on one
    StepClock                           1 thread or all, chosen by timing the steps themselves (decode steps
                                        in cpu.py, training steps in cpu_train.py)

Nothing here changes a result, only how many threads compute it. The thresholds are constants: cpu.py
imports SMALL_ROWS and ROW_SPLIT_MIN, and the functions here read the rest from this module.
"""

from __future__ import annotations

import contextlib
import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numba

PARALLEL_MIN_WORK = 1 << 22  # multiply-adds below which a section runs on one thread (about 0.1 ms)


# ---- full-forward sections ------------------------------------------------------------------------
def workers_for(work):
    """Threads for a section of about `work` multiply-adds: numba.get_num_threads() (so
    numba.set_num_threads(1) makes the whole "cpu" device single-threaded, BLAS aside), or 1 for a
    section too small to repay starting threads."""
    return numba.get_num_threads() if work >= PARALLEL_MIN_WORK else 1


def split(n, parts):
    """range(n) as at most `parts` (start, stop) pieces of nearly equal length."""
    parts = min(parts, n)
    return [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]


def in_parallel(fn, items, workers):
    """fn(items[w::workers]) for each w < workers, on `workers` threads, each calling BLAS single-threaded.

    Why our threads and not BLAS's: attention is many small matmuls (two per head and query block,
    128 a layer at T = 1024), and multi-threaded OpenBLAS synchronises its threads inside each one. On
    a loaded machine every such rendezvous waits for a time slice: one layer's attention took 840 ms
    instead of 24 ms with 2 BLAS threads while other jobs ran. Splitting the heads between threads
    needs one join per layer. NumPy's matmul and the @njit(nogil=True) kernels release the GIL.

    The calling thread takes the first share and a pool kept for the process the others: starting a
    pool for each call cost 0.35 ms, a third of a batch-17 decode step's matmul.
    """
    workers = min(workers, len(items))
    controller = blas_controller() if workers > 1 else None
    if controller is None:
        fn(items)
        return
    shares = [items[w::workers] for w in range(workers)]
    with controller.limit(limits=1, user_api="blas"):
        futures = [worker_pool().submit(fn, share) for share in shares[1:]]
        try:
            fn(shares[0])
        finally:
            for future in futures:
                future.result()  # waits for every share; re-raises a worker's error


_POOLS = {}  # process id -> the worker threads of in_parallel (a forked child starts its own)


def worker_pool():
    """in_parallel's threads: one pool per process, up to NUMBA_NUM_THREADS - 1 threads (the caller is the
    other), started as they are first needed."""
    pool = _POOLS.get(os.getpid())
    if pool is None:
        pool = _POOLS[os.getpid()] = ThreadPoolExecutor(max(1, numba.config.NUMBA_NUM_THREADS - 1),
                                                        thread_name_prefix="minigpt-pixels-cpu")
    return pool


@functools.lru_cache(maxsize=1)
def blas_controller():
    """threadpoolctl's handle on NumPy's BLAS, found once (finding it takes 1.5 ms, using it 10 us); None
    without threadpoolctl (a scikit-learn dependency), and then parallel sections run on one thread."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


@contextlib.contextmanager
def at_most(n):
    """At most n threads compute inside, as torch.set_num_threads(n) would allow: BLAS's and OpenMP's
    (threadpoolctl), and Numba's, where the `cpu` device's kernels run their parallel sections (the training
    attention shares its (batch row, head) pairs among them, whatever BLAS has). Both restored after.
    None: the libraries' own choice. (train's --threads.)"""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    saved = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        numba.set_num_threads(saved)


# ---- decode steps --------------------------------------------------------------------------------
# A decode step feeds few rows (batch x new positions) through every weight. For those steps the
# matmuls and the attention run on Numba's threads (simd.small_matmul, attention_rows_parallel) and BLAS
# is held to one thread: multi-threaded OpenBLAS keeps its threads spinning between calls, and beside
# Numba's threads that made a batch-8 iGPT-S step 2 to 4 times slower. One threading runtime for the
# whole step is what lets the attention use every core: batch-8 steps went from 31/58/77 ms to
# 28/33/47 ms at cache lengths 64/512/1000 (2 cores).
DECODE_ROWS = 1  # at most this many rows: everything on one thread (a single sequence; see blas_threads_for)
SMALL_ROWS = 16  # at most this many rows: a decode step (BLAS on one thread; Numba's threads when worth it)
ROW_SPLIT_MIN = 256  # at least this many rows: a matmul's rows shared among in_parallel's threads (matmul)
DECODE_PARALLEL_MIN_WORK = 1 << 20  # multiply-adds below which a decode section stays on one thread


def blas_threads_for(rows):
    """Single-threaded BLAS around a pass of the "cpu" device over `rows` positions where the device shares
    the matmuls out on its own threads: decode steps (at most SMALL_ROWS rows: Numba's) and passes of at
    least ROW_SPLIT_MIN rows (in_parallel's, see cpu.matmul). Between the two, BLAS keeps its own threads: for
    17 to 255 rows its two threads beat any split of ours (a batch-17 matmul: 0.54 ms against 0.86 ms
    splitting the columns, 0.94 ms the rows). A context manager.

    Decode steps: a one-row step is a chain of matrix-vector products bound by memory bandwidth, and two
    OpenBLAS threads meet at a barrier inside each of its ~100 products: on a machine where another job
    held a core, an iGPT-S step took 190 ms with 2 BLAS threads and 48 ms with one. Full forwards:
    OpenBLAS's threads spin for a while after each multi-threaded call, taking a core from the attention
    that follows: a layer's attention on 2 workers took 25 ms after a 2-thread matmul, 12 ms on its own.
    """
    controller = blas_controller() if rows <= SMALL_ROWS or rows >= ROW_SPLIT_MIN else None
    return controller.limit(limits=1, user_api="blas") if controller is not None else contextlib.nullcontext()


def decode_threads(rows, work):
    """Numba threads for a decode-step section of about `work` multiply-adds: one for a one-row step (as
    for BLAS: a single sequence is bandwidth bound, and a second thread stalls whenever another job holds
    a core) or a small section (a parallel launch costs about 10 us), else numba.get_num_threads()."""
    if rows <= DECODE_ROWS or work < DECODE_PARALLEL_MIN_WORK:
        return 1
    return numba.get_num_threads()


def fused_step_threads(work):
    """The most Numba threads a fused decode step whose largest matmul is `work` multiply-adds may use:
    numba.get_num_threads(), or 1 (no fused step: the Python path) for a model too small to repay them."""
    return numba.get_num_threads() if work >= DECODE_PARALLEL_MIN_WORK else 1


# ---- timing steps ---------------------------------------------------------------------------------
class StepClock:
    """Chooses the thread count of fused decode steps, 1 or `most`, by timing the steps themselves.

    Why: on an idle machine a step on every core is the fastest (the weights stream from memory at the
    bandwidth of several cores), but where other jobs hold the cores, each of a step's ~120 parallel
    sections waits at its end for a thread that is not running: iGPT-S batch-1 steps took 300-2300 ms on
    2 threads against 75-155 ms on one, on this project's 2-core machine with 6 other jobs running.
    Nothing a library can read says which case it is in, so it measures. Each setting is tried once, the
    faster is kept, and the other is tried again after `explore` steps, then after twice as many each
    time it loses again (at most `longest`), so a loaded machine pays one slow step in every few hundred.
    Per key (batch, width, layers, threads): a step's time grows with the cache, so a retried setting is
    compared with the kept one's latest steps. Results never depend on the choice (cpu.DECODE_PARTS).
    A key's first step is not timed: it starts Numba's thread pool and touches the cache's first pages
    (measured 2-3 times a later step), and counted, it made a batch-1 run keep one thread for 16 steps.
    """

    def __init__(self, explore=16, longest=512):
        self.explore, self.longest = explore, longest
        self.seconds, self.gap, self.left = {}, {}, {}  # per key: {threads: seconds}, steps between tries, to go
        self.warmed = set()  # keys whose first (untimed) step has run

    def choose(self, key, most):
        times = self.seconds.setdefault(key, {})
        for n in (most, 1):
            if n not in times:
                return n
        best = min(times, key=times.get)
        if self.left.get(key, 0) > 0:
            self.left[key] -= 1
            return best
        return 1 if best == most else most  # try the other again

    def record(self, key, threads, seconds):
        if key not in self.warmed:  # the warm-up step: not a measurement
            self.warmed.add(key)
            return
        times = self.seconds.setdefault(key, {})
        best = min(times, key=times.get) if len(times) == 2 else None
        if best is None or threads != best:  # a first try or a retry: its own latest time
            times[threads] = seconds
            if best is not None:  # a retry: keep its result for longer each time it loses again
                won = min(times, key=times.get) == threads
                self.gap[key] = self.explore if won else min(2 * self.gap.get(key, self.explore), self.longest)
            self.left[key] = self.gap.get(key, self.explore)
        else:
            times[threads] = (times[threads] + seconds) / 2  # the kept setting: a running average
