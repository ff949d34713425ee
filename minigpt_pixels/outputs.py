"""The mapping protocol transformers' ModelOutput offers, written once for every output dataclass.

A subclass is a dataclass whose fields are transformers' output names. Index it by name (out["logits"]),
attribute (out.logits) or position (out[0]); `len(out)`, `keys()`, `values()`, `items()` and `to_tuple()`
count only the fields that are set (not None), in declaration order, as transformers does.
"""

from __future__ import annotations

from dataclasses import fields


class OutputMapping:
    """Mixin for output dataclasses: the read-only mapping protocol over the fields that are set."""

    def keys(self):
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def values(self):
        return self.to_tuple()

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self):
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else self.to_tuple()[key]

    def __contains__(self, key):
        return key in self.keys()

    def __len__(self):
        return len(self.keys())

    def __iter__(self):
        return iter(self.keys())
