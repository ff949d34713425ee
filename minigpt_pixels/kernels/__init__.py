"""Numba versions of the layers: `cpu.py` (the "cpu" device, which "auto" picks for big models) and `cuda.py`
(@cuda.jit, used after `model.to("cuda")`). Each mirrors the layers.py function it replaces, in layers.py's
order. `cpu.py` holds the functions the backend calls; the compiled loops they call are in `cpu_loops.py`, and
how many threads each section runs on is `threads.py`'s decision. `cuda.py` holds each op's kernel, launcher
and checked wrapper together; `cuda_device.py` the device plumbing (errors, tile sizes, allocation, transfers).
`cpu_train.py` is the "cpu" device's training pass: layers.py's `f_forward` / `f_backward` pairs with Numba
kernels, run by backprop.py (see backprop.training_path), and AdamW's fused update (optim.py).
`cuda_model.py` runs the whole forward pass with the CUDA kernels, activations staying on the device.
`simd.py` gives Numba eight-lane float32 vectors and the few-row matmul of decode steps.
`compile_cache.py` keeps the compiled CPU kernels on disk between runs (Numba's cache, checked against
every file here) and says, in one line, when they are being compiled.

Nothing here is imported with the package: `cuda.py` and `cuda_model.py` load when CUDA is asked for,
so a machine without a GPU never needs a CUDA driver to import minigpt_pixels."""
