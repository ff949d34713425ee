"""Numba versions of the layers: `cpu.py` (@njit, used by the default "cpu" device) and `cuda.py`
(@cuda.jit, used after `model.to("cuda")`). Each mirrors the layers.py function it replaces.
`cuda_model.py` runs the whole forward pass with the CUDA kernels, activations staying on the device.

Nothing here is imported with the package: `cuda.py` and `cuda_model.py` load when CUDA is asked for,
so a machine without a GPU never needs a CUDA driver to import minigpt_pixels."""
