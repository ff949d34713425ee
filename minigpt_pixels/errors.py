"""ModelInputError, the one error every input check raises (inputs.py, cache.py, the kernels' own
checks). It lives apart so that the cache, which raises it, and inputs.py, which checks caches, import
it from below instead of from each other."""


class ModelInputError(ValueError):
    """An input (ids, mask, cache, embeddings, labels) the model cannot take; the message names it."""
