"""The CUDA kernels' device plumbing, apart from the kernels (cuda.py): what a reader of a kernel does
not need to read first.

    CudaUnavailableError, require_cuda     the one clear error where numba finds no GPU (and no simulator)
    MatmulTiles ... ELEMENTWISE_MAX_BLOCKS tile and block sizes: the factories' compile-time constants, with
                                           the defaults for a real GPU (the tests pass small ones)
    device_empty, to_device                allocation and upload; DeviceMemoryError names the bytes asked for
    device_float32, as_rows, as_flat,      the wrappers' conversions and checks: host or device arrays in,
    check_out, finish, check_threads       float32 device arrays to the launchers, a host array back for a host
                                           input
    permute, n_blocks, sm_count,           views, grid sizes, the device's SM count, and numba's low-occupancy
    small_grids_expected                   warning turned off while the model runner launches small grids

Nothing here compiles a kernel or needs a GPU to import. cuda.py re-exports the public names, so callers
(cuda_model.py, sample.py, notebook 6, the tests) use them as `cuda.X`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import numba
import numpy as np
from numba import cuda


class CudaUnavailableError(RuntimeError):
    """CUDA was asked for on a machine where numba finds no GPU (and the simulator is off)."""


class DeviceMemoryError(MemoryError):
    """A device allocation failed; the message names the bytes asked for."""


# ---- tile and block sizes --------------------------------------------------------------------------
class MatmulTiles(NamedTuple):
    """A block computes a [bm, bn] tile of the output; each thread a [tm, tn] sub-tile in registers."""
    bm: int = 128
    bn: int = 128
    bk: int = 8
    tm: int = 8
    tn: int = 8

    @property
    def threads(self):
        return (self.bm // self.tm) * (self.bn // self.tn)


class SkinnyTiles(NamedTuple):
    """For few rows (decode steps: M = B): a block covers `cols` output columns of up to `rows` rows,
    `splits` groups of `cols` threads each summing every splits-th k. The weights are streamed once;
    with so few rows there is no tile reuse to win."""
    cols: int = 32
    splits: int = 8
    rows: int = 8

    @property
    def threads(self):
        return self.cols * self.splits


class AttentionTiles(NamedTuple):
    """One thread per query row, `bq` rows a block; keys and values staged `bkv` at a time."""
    bq: int = 64
    bkv: int = 32


class DecodeTiles(NamedTuple):
    """One block per (batch, head); scores computed `chunk` keys at a time. threads: a power of two."""
    threads: int = 128
    chunk: int = 256


# The defaults the launchers use. cuda.py imports them, and its launchers read its own names: to change one
# for a run, set cuda.MATMUL_TILES and so on (as tests/test_kernels_cuda.py's small_tiles does).
MATMUL_TILES = MatmulTiles()
MATMUL_TILES_SMALL = MatmulTiles(64, 64, 8, 4, 4)  # when the big tiles would leave SMs idle (small M * N)
SKINNY_TILES = SkinnyTiles()
SKINNY_MAX_ROWS = 32  # up to here the skinny kernel wins: big tiles would be mostly padding
ATTENTION_TILES = AttentionTiles()
ATTENTION_TILES_SMALL = AttentionTiles(32, 32)  # when 64-query blocks would leave SMs idle (small B * H * T)
DECODE_TILES = DecodeTiles()
ROW_THREADS = 128  # layer norm and softmax: one block per row; a power of two (tree reduction)
ELEMENTWISE_THREADS = 256
ELEMENTWISE_MAX_BLOCKS = 4096  # element-wise kernels loop grid-stride over whatever this grid leaves


# ---- availability, allocation, conversion ----------------------------------------------------------
@functools.cache
def _cuda_available():
    return bool(cuda.is_available())  # True under the simulator (NUMBA_ENABLE_CUDASIM=1)


def require_cuda():
    """Raise CudaUnavailableError, with what to do instead, unless numba can use a GPU (or the simulator)."""
    if not _cuda_available():
        raise CudaUnavailableError(
            "CUDA is not available: numba found no CUDA GPU and driver (numba.cuda.is_available() is False). "
            "Use model.to('cpu'), or set NUMBA_ENABLE_CUDASIM=1 before numba is imported to run the kernels "
            "in numba's (slow) CUDA simulator.")


def simulated():
    return bool(numba.config.ENABLE_CUDASIM)


@contextlib.contextmanager
def small_grids_expected():
    """Numba warns at every launch of fewer than 128 blocks. A decode step launches such grids by
    design (a block per (batch, head), or per 32 output columns) and the warning's own cost adds up
    over hundreds of launches a token, so the model runner turns it off while it runs, then back."""
    before = numba.config.CUDA_LOW_OCCUPANCY_WARNINGS
    numba.config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
    try:
        yield
    finally:
        numba.config.CUDA_LOW_OCCUPANCY_WARNINGS = before


def _out_of_memory(err):
    """The driver's CUDA_ERROR_OUT_OF_MEMORY, or the simulator's host MemoryError."""
    return isinstance(err, MemoryError) or "OUT_OF_MEMORY" in str(err)


def _alloc_error(nbytes, shape, err):
    try:
        free, total = cuda.current_context().get_memory_info()
        room = f"; {free / 2**20:.0f} MiB of {total / 2**20:.0f} MiB free" if np.isfinite(total) else ""
    except Exception:  # best effort: the message stands without it
        room = ""
    return DeviceMemoryError(f"out of device memory: could not allocate {nbytes} bytes ({nbytes / 2**20:.1f} MiB) "
                             f"for an array of shape {tuple(shape)}{room} ({err})")


def _allocation_errors():
    from numba.cuda.cudadrv.driver import CudaAPIError  # the simulator swaps in its own module
    return MemoryError, CudaAPIError


def device_empty(shape, dtype=np.float32):
    """An uninitialised device array; a failed allocation raises DeviceMemoryError naming its size."""
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    try:
        return cuda.device_array(shape, dtype=dtype)
    except _allocation_errors() as e:
        if not _out_of_memory(e):
            raise
        raise _alloc_error(nbytes, shape, e) from e


def to_device(x, dtype=np.float32):
    """Upload a host array as a contiguous array of `dtype`; DeviceMemoryError if it does not fit."""
    arr = np.ascontiguousarray(x, dtype=dtype)
    try:
        return cuda.to_device(arr)
    except _allocation_errors() as e:
        if not _out_of_memory(e):
            raise
        raise _alloc_error(arr.nbytes, arr.shape, e) from e


def is_device_array(x):
    return getattr(x, "__cuda_ndarray__", False) or hasattr(x, "__cuda_array_interface__")


def device_float32(x, name):
    """x as a float32 device array: host arrays converted (float64 -> float32, strides -> contiguous)
    and uploaded; device arrays used as they are (views with any strides are fine)."""
    if is_device_array(x):
        if not getattr(x, "__cuda_ndarray__", False):
            x = cuda.as_cuda_array(x)  # e.g. a torch CUDA tensor: zero-copy
        if x.dtype != np.float32:
            raise TypeError(f"{name}: device array has dtype {x.dtype}; the CUDA kernels take float32 "
                            f"(convert before uploading)")
        return x
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)) or arr.dtype == bool:
        raise TypeError(f"{name} must be a float array, got dtype {arr.dtype}")
    return to_device(arr)


def as_rows(x, name):
    """View [..., n] as [rows, n]; a 1-D array is one row (device reshape needs a contiguous array)."""
    if x.ndim == 2:
        return x
    try:
        return x.reshape(int(np.prod(x.shape[:-1], dtype=np.int64)), x.shape[x.ndim - 1])
    except NotImplementedError:
        raise ValueError(f"{name}: a non-contiguous device array of shape {x.shape} cannot be flattened to rows; "
                         f"pass a contiguous array") from None


def as_flat(x, name):
    try:
        return x.reshape(x.size)
    except NotImplementedError:
        raise ValueError(f"{name}: a non-contiguous device array cannot be flattened; pass a contiguous array") \
            from None


def finish(out, on_device):
    return out if on_device else out.copy_to_host()


def check_out(out, shape, name="out"):
    if out is None:
        return device_empty(shape)
    if not is_device_array(out) or out.dtype != np.float32 or tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} must be a float32 device array of shape {tuple(shape)}")
    return out


def n_blocks(n, per_block):
    return max(1, -(-n // per_block))  # ceil(n / per_block), at least one block


def permute(x, axes):
    """A transposed view of a device array (numba's DeviceNDArray.transpose only handles 2-D)."""
    if simulated():
        return x.transpose(axes)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    return DeviceNDArray(shape=tuple(x.shape[a] for a in axes), strides=tuple(x.strides[a] for a in axes),
                         dtype=x.dtype, gpu_data=x.gpu_data, stream=x.stream)


@functools.cache
def sm_count():
    return getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 1)  # the simulator has no SMs to fill


def check_threads(n):
    if n < 1 or n & (n - 1):
        raise ValueError(f"threads must be a power of two, got {n}")
    return n
