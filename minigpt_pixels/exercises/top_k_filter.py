"""Exercise: top-k filtering of logits, replacing `generation.top_k_filter`."""

import numpy as np

from .. import generation
from .causal_attention import softmax
from .engine import F32, Case, Exercise, Mistake


def keep_top(logits, k, fill=-np.inf):
    """Every logit >= the k-th largest of its row kept (ties with it too), `fill` elsewhere."""
    kth = np.sort(logits, axis=-1)[..., -k][..., None]  # the k-th largest
    return np.where(logits >= kth, logits, F32(fill)).astype(F32)


def _exact_k(logits, k):
    idx = np.argsort(-logits, axis=-1, kind="stable")[:, :k]  # exactly k indices, ties broken by position
    out = np.full_like(logits, -np.inf)
    np.put_along_axis(out, idx, np.take_along_axis(logits, idx, -1), -1)
    return out


def _case(B, V, k, ties=False):
    def make(rng):
        logits = (rng.normal(size=(B, V)) * 2).astype(F32)  # [B, V]
        if ties:  # the 3rd and 4th largest of each row are equal: both are kept
            order = np.argsort(-logits, axis=-1)
            rows = np.arange(B)
            logits[rows, order[:, 3]] = logits[rows, order[:, 2]]
        return logits, k
    return make


EXERCISE = Exercise(
    name="top_k_filter",
    signature="top_k_filter(logits, k)",
    returns="float32 logits [B, V]: the k largest of each row kept, -inf elsewhere",
    reference=generation.top_k_filter,
    neg_inf_ok=True,
    points=2,
    cases=(Case("k=3 of 12", _case(4, 12, 3)),
           Case("k=1 (greedy)", _case(3, 12, 1)),
           Case("k=V keeps everything", _case(2, 7, 7)),
           Case("ties with the k-th largest are kept (as in transformers)", _case(3, 12, 3, ties=True))),
    mistakes=(
        Mistake("keeps_k_plus_1", lambda lg, k: keep_top(lg, min(k + 1, lg.shape[-1])),
                "you kept k + 1 logits (an off-by-one: the k-th largest is np.sort(row)[-k], or "
                "np.partition(row, -k)[-k])"),
        Mistake("keeps_k_minus_1", lambda lg, k: keep_top(lg, k - 1) if k > 1 else np.full_like(lg, -np.inf),
                "you kept k - 1 logits (an off-by-one): keep the k largest, the k-th included"),
        Mistake("keeps_smallest", lambda lg, k: np.where(lg <= np.sort(lg, -1)[:, k - 1:k], lg, -np.inf).astype(F32),
                "you kept the k smallest logits: keep the k largest"),
        Mistake("zero_fill", lambda lg, k: keep_top(lg, k, fill=0.0),
                "the removed logits were set to 0, which softmax still gives weight: set them to -inf"),
        Mistake("returns_probs", lambda lg, k: softmax(keep_top(lg, k)).astype(F32),
                "you returned probabilities; return the filtered logits (sampling takes the softmax later)"),
        Mistake("returns_values", lambda lg, k: np.sort(lg, -1)[:, ::-1][:, :k],
                "you returned only the k kept values [B, k]; return all V logits with -inf where removed"),
        Mistake("ties_broken", _exact_k,
                "you kept exactly k indices; transformers keeps every logit equal to the k-th largest too: "
                "compare each logit with the k-th largest value (logits < kth -> -inf)"),
    ),
    advice="kth = the k-th largest of each row; return np.where(logits < kth, -inf, logits).",
)
