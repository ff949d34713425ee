"""Exercise: the likelihood of an image in bits per token, the number `train.evaluate` reports.

The student gets the model's logits and the tokens it should have predicted, already aligned (the model
read SOS + pixels[:-1], so the logits at position t are its distribution over pixel t), and returns
each image's mean surprise -log2 p(pixel t | pixels before it).
"""

import numpy as np

from .. import layers
from .engine import F32, Case, Exercise, Mistake

LN2 = np.log(2.0)


def _surprise(logits, targets, logp_fn=layers.log_softmax):
    """-log p(target) in nats, [B, T]."""
    logp = logp_fn(logits.astype(F32))  # [B, T, V]
    return -np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def _reference(logits, targets):
    return (_surprise(logits, targets).mean(axis=-1) / LN2).astype(F32)  # [B]


def _naive_log_softmax(x):
    with np.errstate(all="ignore"):
        e = np.exp(x)  # no max subtracted: inf for logits above ~88, and inf / inf = NaN
        return np.log(e / e.sum(axis=-1, keepdims=True))


def _case(B, T, V, mag=1.0):
    def make(rng):
        logits = (rng.normal(size=(B, T, V)) * mag).astype(F32)  # [B, T, V]
        targets = rng.integers(0, V, size=(B, T))  # [B, T] palette ids
        return logits, targets
    return make


EXERCISE = Exercise(
    name="bits_per_token",
    signature="bits_per_token(logits, targets)",
    returns="float32 [B]: each image's mean -log2 p(target) over its T positions",
    reference=_reference,
    points=2,
    cases=(Case("B=3 images, T=6 positions, V=16 colours", _case(3, 6, 16)),
           Case("confident logits (up to ~150: exp overflows unless the max is subtracted)", _case(2, 5, 16, mag=50.0)),
           Case("iGPT's 512 colours, T=10", _case(2, 10, 512))),
    mistakes=(
        Mistake("nats_not_bits", lambda lg, t: _surprise(lg, t).mean(-1).astype(F32),
                "these are nats (natural log): divide by ln 2 for bits"),
        Mistake("log10", lambda lg, t: (_surprise(lg, t).mean(-1) / np.log(10)).astype(F32),
                "you took log10: bits are log base 2 (np.log2, or the natural log divided by ln 2)"),
        Mistake("no_minus", lambda lg, t: (-_surprise(lg, t).mean(-1) / LN2).astype(F32),
                "the sign is wrong: the surprise is -log2 p, which is >= 0"),
        Mistake("summed_not_mean", lambda lg, t: (_surprise(lg, t).sum(-1) / LN2).astype(F32),
                "you summed over the positions (bits per image); take the mean over the T positions (bits per token)"),
        Mistake("mean_over_all", lambda lg, t: (_surprise(lg, t).mean() / LN2).astype(F32),
                "you averaged over the images too: return one number per image, the mean over its own T positions"),
        Mistake("shifted_again", lambda lg, t: (_surprise(lg[:, :-1], t[:, 1:]).mean(-1) / LN2).astype(F32),
                "you shifted the targets: they are already aligned with the logits (the model read SOS + "
                "pixels[:-1], so logits[:, t] is the distribution of targets[:, t])"),
        Mistake("most_likely_not_target",
                lambda lg, t: (_surprise(lg, np.argmax(lg, axis=-1)).mean(-1) / LN2).astype(F32),
                "you scored the most likely colour, not the true one: pick each position's log-probability at "
                "targets[b, t] (np.take_along_axis)"),
        Mistake("no_softmax", lambda lg, t: (_surprise(lg, t, lambda x: x).mean(-1) / LN2).astype(F32),
                "the logits are not log-probabilities: apply log-softmax over the colours (the last axis) first"),
        Mistake("log_of_naive_softmax", lambda lg, t: (_surprise(lg, t, _naive_log_softmax).mean(-1) / LN2).astype(F32),
                "log(softmax) overflowed: exp of a large logit is inf. Use log-softmax, z - log(sum(exp(z))) with "
                "z = logits - their max over the last axis"),
    ),
    advice="bits = -(log_softmax(logits) at the targets), averaged over the T positions of each image, / ln 2.",
)
