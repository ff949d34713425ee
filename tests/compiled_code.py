"""The machine code of compiled kernels, for the tests that read it (no float64 instructions)."""

import re

import numba

# a double-precision arithmetic or conversion instruction in x86 assembly (scalar sd or packed pd)
FLOAT64_OP = re.compile(r"^\s*v?(add|sub|mul|div|sqrt|max|min|fmadd\w*|cvtss2|cvtsi2|cvtsd2|round)(sd|pd)\b", re.M)


def assembly(kernel):
    """{signature: assembly} for each signature `kernel` has compiled. Numba keeps no assembly for
    code it loaded from its on-disk cache (inspect_asm gives an empty listing), so those signatures are
    compiled again here, in this process, without the cache: the same source and options."""
    options = {k: v for k, v in kernel.targetoptions.items() if k != "nopython"}
    asm, fresh = {}, None
    for sig in kernel.signatures:
        if kernel.stats.cache_hits.get(sig):
            fresh = fresh or numba.njit(**options)(kernel.py_func)
            fresh.compile(sig)
            asm[sig] = fresh.inspect_asm(sig)
        else:
            asm[sig] = kernel.inspect_asm(sig)
    for sig, text in asm.items():
        assert "ret" in text, f"{kernel.__name__}{sig}: no assembly to check"
    return asm
