"""Compiled kernels kept between runs, and one line saying when they are being compiled.

Numba compiles a kernel on its first call: about 5 s for the main job's, about 20 s more for the
parallel decode kernels of a big model. `njit` below is numba.njit with Numba's file cache: the machine
code goes to disk, and later processes load it instead (milliseconds a kernel; Numba's own start-up,
about 1 s, remains). Where it goes is Numba's own choice, left alone: NUMBA_CACHE_DIR when the user
sets it, else the __pycache__ beside the source when that is writable (an editable install), else a
per-user directory (~/.cache/numba/... on Linux: a read-only, installed package). Nothing here sets an
environment variable.

The cache can never stop a kernel from running (`KernelCache`): a damaged entry (Numba writes its files
without fsync, so a crash can leave one truncated, empty or garbage) is deleted and the kernel compiled
again; with no writable place for it (a container under an arbitrary uid, HOME and the install read-only)
the kernels run uncached. Each says so in one warning line on stderr, once a process. Under
NUMBA_DISABLE_JIT=1, Numba's debugging switch, `njit` hands back the Python function and `intrinsic` its
Python twin, so the kernels run as (slow) Python.

One thing Numba's cache gets wrong for us: it checks a cached kernel against its own source file
only, yet cpu_loops.py's decode kernels have simd.py's matmul compiled into them, so an edit of simd.py alone
would leave them running the old code. So each kernel is stamped with every .py file of its directory
(kernels/): an edit of any of them recompiles all of them. (A reinstall changes nothing: the stamp is
the files' contents.)
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import os
import sys

import numba
import numba.extending
from numba.core import caching, event
from numba.core.dispatcher import Dispatcher


@functools.lru_cache(maxsize=None)
def _file_hash(path, mtime, size):  # mtime and size in the key: an edited file is hashed again
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def sources_stamp(directory):
    """(name, sha256) of every .py file in `directory`: what a cached kernel there is checked against."""
    stamp = []
    for path in sorted(glob.glob(os.path.join(directory, "*.py"))):
        st = os.stat(path)
        stamp.append((os.path.basename(path), _file_hash(path, st.st_mtime_ns, st.st_size)))
    return tuple(stamp)


class _DirectoryStamp:
    """A Numba cache locator whose source stamp is the whole directory's, not the one file's."""
    def get_source_stamp(self):
        return sources_stamp(os.path.dirname(os.path.abspath(self._py_file)))


# Numba's three file-system locators, in Numba's order, each with the directory-wide stamp
class _UserProvidedLocator(_DirectoryStamp, caching.UserProvidedCacheLocator):
    pass


class _InTreeLocator(_DirectoryStamp, caching.InTreeCacheLocator):
    pass


class _UserWideLocator(_DirectoryStamp, caching.UserWideCacheLocator):
    pass


class _CacheImpl(caching.CompileResultCacheImpl):
    _locator_classes = [_UserProvidedLocator, _InTreeLocator, _UserWideLocator]


class KernelCache(caching.FunctionCache):
    """numba's FunctionCache (what cache=True installs), with the directory-wide source stamp, that never
    stops a kernel from running: a damaged entry is deleted and the kernel compiled again, and an entry
    that cannot be written leaves the kernel uncached, each with one warning line."""
    _impl_class = _CacheImpl

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception as e:  # Numba writes its files without fsync: truncated, empty or garbage after a crash
            removed = self._remove_entries()
            warn_once("damaged", f"damaged Numba cache file(s) for {self._py_func.__qualname__} in {self._cache_path} "
                                 f"({type(e).__name__}: {str(e)[:80]}); deleted {removed}, compiling again")
            return None  # a miss: the dispatcher compiles, then save_overload writes a fresh entry

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except Exception as e:  # a read-only or full disk: the compiled kernel runs all the same
            self.disable()
            warn_once("unsaved", f"cannot write the Numba cache in {self._cache_path} ({type(e).__name__}: "
                                 f"{str(e)[:80]}); the kernels run uncached, compiled again in every process")

    def _remove_entries(self):
        """Delete this kernel's index (.nbi) and every data file (.nbc) it names; return how many went."""
        index = self._cache_file._index_path
        data = glob.glob(glob.escape(index[: -len(".nbi")]) + ".*.nbc")
        removed = 0
        for path in [index, *data]:
            with contextlib.suppress(OSError):
                os.remove(path)
                removed += 1
        return removed


_WARNED = set()


def warn_once(kind, message):
    """One line on stderr, once a process per kind: the cache's troubles are the user's to know of, but a
    run of forty kernels must not print forty lines."""
    if kind not in _WARNED:
        _WARNED.add(kind)
        print(f"warning: {message}", file=sys.stderr)


def njit(*, parallel=False, **options):
    """numba.njit(**options) with its compiled code cached on disk, as cache=True does but checked
    against every kernel file (see the module docstring)."""
    def decorate(fn):
        dispatcher = numba.njit(parallel=parallel, **options)(fn)
        if not isinstance(dispatcher, Dispatcher):  # NUMBA_DISABLE_JIT=1: njit gave back fn, to run as Python
            return dispatcher
        try:
            dispatcher._cache = KernelCache(dispatcher.py_func)  # what Dispatcher.enable_caching() sets
        except (RuntimeError, OSError) as e:  # "no locator available": no writable place; the kernel runs uncached
            warn_once("no place", f"no writable place for Numba's cache ({str(e)[:120]}); the kernels run "
                                  f"uncached, compiled again in every process (set NUMBA_CACHE_DIR to a writable "
                                  f"folder to keep them)")
        return dispatcher
    return decorate


def intrinsic(python):
    """numba.extending.intrinsic; under NUMBA_DISABLE_JIT=1, where the kernels run as Python functions and an
    intrinsic cannot be called from Python, its twin `python` (the same result, slowly) takes its place."""
    def decorate(fn):
        return python if numba.config.DISABLE_JIT else numba.extending.intrinsic(fn)
    return decorate


# ---- saying so when a kernel compiles ------------------------------------------------------------
COMPILING_MESSAGE = "compiling the Numba kernels (once: later runs load them from the cache)"


class _FirstCompile(event.Listener):
    """Prints COMPILING_MESSAGE when the first of this package's kernels starts compiling (a cache
    miss); a kernel loaded from the cache says nothing."""

    def __init__(self, stream):
        self.stream, self.said = stream, False

    def on_start(self, ev):
        module = getattr(ev.data["dispatcher"].py_func, "__module__", "") or ""
        if not self.said and module.startswith(__package__.split(".")[0] + "."):
            self.said = True
            from tqdm import tqdm  # tqdm.write: keeps a progress bar on screen intact

            tqdm.write(COMPILING_MESSAGE, file=self.stream)

    def on_end(self, ev):
        pass


@contextlib.contextmanager
def compiling_notice(stream=None):
    """Within this block, one line on `stream` (default stderr) the first time one of this package's
    Numba kernels compiles instead of loading from the cache."""
    with event.install_listener("numba:compile", _FirstCompile(stream or sys.stderr)):
        yield
