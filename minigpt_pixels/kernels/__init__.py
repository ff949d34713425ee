"""Numba versions of the layers: `cpu.py` (@njit, used by the default "cpu" device) and `cuda.py`
(@cuda.jit, used after `model.to("cuda")`). Each mirrors the layers.py function it replaces."""
