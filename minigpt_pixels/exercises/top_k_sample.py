"""Exercise: top-k sampling, replacing `generation.sample_from_logits(logits, rng, top_k=k)`.

Draws are random, so they are judged by their statistics over many rows of three kinds, drawn from the
case's seed: which tokens are ever drawn, how often each is drawn against the probability it should have,
and the mean logit of the drawn tokens, the statistic a temperature moves (tight enough that sampling at
temperature 1.1 fails). Following `rng` is tested exactly (engine.extra_calls): the same generator state
must give the same draws, another state other draws.
"""

import numpy as np

from .. import generation
from .causal_attention import softmax
from .engine import Case, Exercise, Mistake, _Fail
from .top_k_filter import keep_top

ROWS = 1.5 * np.array([  # logits of three kinds of rows (before each case shuffles them); counted per kind
    [2.0, 1.7, 1.5, 1.4, 0.2, -0.5, 0.0, -1.0, 0.9, -2.0],  # the 4th most likely is close to the 3rd
    [0.1, -0.3, 0.5, 0.0, 0.4, -0.2, 0.3, 0.2, -0.1, 0.35],  # nearly flat
    [-1.0, 0.0, 3.0, -2.0, 1.0, 0.5, -0.5, 2.0, 1.5, -3.0],  # the most likely is not first
], np.float32)
DRAWS_PER_ROW = 4000
Z_MAX = 4.5  # standard errors the drawn tokens' mean logit may be off: an honest sampler fails 1 in 10^5 times
RUN_OFF_ROUNDING = 0.01  # more draws past the last token than this share: not rounding (no renormalising gives > 30%)


def _case(k):
    def make(rng):  # each row kind's tokens shuffled and nudged: the seed decides which token is likely
        rows = np.stack([r[rng.permutation(r.size)] for r in ROWS]) + rng.normal(0, 0.05, ROWS.shape)
        return np.repeat(rows.astype(np.float32), DRAWS_PER_ROW, axis=0), k, rng  # [3 * 4000, 10]
    return make


def _sample_rows(probs, rng):
    u = rng.random(probs.shape[0])[:, None]  # [B, 1]
    return np.minimum(np.sum(np.cumsum(probs, axis=-1) <= u, axis=-1), probs.shape[-1] - 1)


def _no_renormalise(logits, k, rng):
    probs = softmax(logits)  # over all V tokens ...
    probs = np.where(logits >= np.sort(logits, axis=-1)[:, -k][:, None], probs, 0)  # ... then the rest zeroed
    u = rng.random(logits.shape[0])[:, None]
    return np.sum(np.cumsum(probs, axis=-1) <= u, axis=-1)  # runs off the end: id V when u > kept mass


def _no_renormalise_choice(logits, k, rng):
    return np.array([rng.choice(len(r), p=np.where(r >= np.sort(r)[-k], softmax(r), 0)) for r in logits])


def _compare(ids, args):
    """Every draw within the row's top k (ties with the k-th kept), each token drawn about as often as
    softmax over the kept logits says (within 5 standard deviations), and the drawn tokens' mean logit
    within Z_MAX standard errors of its expectation (a temperature other than 1 moves it)."""
    logits, k, _ = args
    V = logits.shape[-1]
    rows = logits[::DRAWS_PER_ROW]  # [3, V]: the row kinds, as drawn for this case
    if ids.shape != (logits.shape[0],):
        raise _Fail(f"expected one id per row, shape {(logits.shape[0],)}, got shape {ids.shape}")
    if ids.min() < 0 or ids.max() >= V:
        bad = ids[(ids < 0) | (ids >= V)]
        first, share = int(bad[0]), len(bad) / len(ids)
        message = f"drew token id {first}, outside [0, {V}), in {len(bad)} of {len(ids)} draws"
        if first == V and share <= RUN_OFF_ROUNDING:  # a CDF ending a rounding error below 1
            raise _Fail(f"{message}. So few draws ran past the last token that the probabilities were "
                        f"renormalised, but their cumulative sum ends a rounding error below 1 and a random "
                        f"number above that end finds no token: clip the index to V - 1, or draw u * cdf[-1]",
                        remind=False)
        raise _Fail(message, "no_renormalise" if first == V else None)
    shift, variance = 0.0, 0.0  # of the drawn tokens' mean logit, summed over the row kinds
    for r, row in enumerate(rows):
        s, v = _check_row(r, row, ids[r * DRAWS_PER_ROW:(r + 1) * DRAWS_PER_ROW], k)
        shift, variance = shift + s, variance + v
    z = shift / np.sqrt(variance) if variance > 0 else 0.0
    if abs(z) > Z_MAX:
        raise _Fail(f"the drawn tokens' logits average {shift / (DRAWS_PER_ROW * len(rows)):+.4f} away from what "
                    f"sampling at temperature 1 gives, {abs(z):.1f} standard errors (at most {Z_MAX:g}): the draws "
                    f"are {'flatter' if z < 0 else 'sharper'} than softmax over the kept logits", "wrong_frequencies")
    return 0.0


def _check_row(r, row, drawn, k):
    """One row kind's draws: only kept tokens, not all one token, each token's frequency within 5 standard
    deviations. -> (the drawn logits' sum minus its expectation, its variance): the temperature statistic."""
    n, V = len(drawn), row.shape[-1]
    counts = np.bincount(drawn, minlength=V)  # [V]
    rank = np.argsort(np.argsort(-row, kind="stable"), kind="stable")  # 0 = the most likely
    kept = row >= np.sort(row)[-k]
    outside = np.flatnonzero((counts > 0) & ~kept)
    if len(outside):
        ranks = sorted({int(rank[t]) + 1 for t in outside})
        mistake = "keeps_k_plus_1" if ranks == [k + 1] else "ignores_k"
        raise _Fail(f"row kind {r}: drew token(s) {outside.tolist()}, the {_ordinals(ranks)} most likely, "
                    f"with k = {k}: only the {k} most likely may be drawn", mistake)
    if k > 1 and np.count_nonzero(counts) == 1:
        raise _Fail(f"row kind {r}: only token {int(np.argmax(counts))} was drawn, {n} times out of {n}", "greedy")
    expected = generation.softmax(generation.top_k_filter(row[None], k))[0]  # [V]
    freq = counts / n
    sigma = np.sqrt(expected * (1 - expected) / n)
    if (np.abs(freq - expected) > 5 * sigma + 0.005).any():
        t = int(np.argmax(np.abs(freq - expected) - 5 * sigma))
        table = ", ".join(f"{j}: {expected[j]:.3f} vs {freq[j]:.3f}" for j in np.argsort(-expected)[:k])
        raise _Fail(f"row kind {r}: token {t} drawn with frequency {freq[t]:.3f}, expected {expected[t]:.3f} "
                    f"(probability vs your frequency, most likely first: {table})", "wrong_frequencies")
    mean = float(np.sum(expected * row, dtype=np.float64))
    return (float(np.sum(row[drawn], dtype=np.float64)) - n * mean,
            n * float(np.sum(expected * (row - mean) ** 2, dtype=np.float64)))


def _ordinals(ranks):
    suffix = {1: "st", 2: "nd", 3: "rd"}
    return ", ".join(f"{r}{suffix.get(r if r < 20 else r % 10, 'th')}" for r in ranks)


EXERCISE = Exercise(
    name="top_k_sample",
    signature="top_k_sample(logits, k, rng)",
    returns="int token ids [B]: one draw per row, from softmax over the row's k largest logits",
    reference=lambda logits, k, rng: generation.sample_from_logits(logits, rng, top_k=k),
    compare=_compare,
    calls_twice=True,
    points=2,
    cases=(Case(f"k=3, {DRAWS_PER_ROW} rows of each of 3 kinds", _case(3)),
           Case("k=1: always the most likely", _case(1)),
           Case("k=V: plain sampling", _case(10))),
    mistakes=(
        Mistake("keeps_k_plus_1",
                lambda lg, k, rng: _sample_rows(softmax(keep_top(lg, min(k + 1, lg.shape[-1]))), rng),
                "a token just outside the top k was drawn: you kept k + 1 (an off-by-one)", expect="k + 1"),
        Mistake("ignores_k", lambda lg, k, rng: _sample_rows(softmax(lg), rng),
                "tokens far outside the top k were drawn: filter the logits (keep the k largest) before sampling",
                expect="filter the logits"),
        Mistake("no_renormalise", _no_renormalise,
                "the kept probabilities were not renormalised: after zeroing the others, divide by their sum "
                "(or apply softmax to the filtered logits), or the draw can run past the last kept token",
                expect="not renormalised"),
        # The exception alone cannot tell a sum of 0.7 (not renormalised) from 0.99999994 (renormalised in
        # float32), so the hint names both.
        Mistake("no_renormalise_choice", _no_renormalise_choice,
                "rng.choice checks that p sums to 1 in float64, to about 1e-8. Either the kept probabilities "
                "were not renormalised (divide them by their sum), or they were renormalised in float32, which "
                "is not precise enough for it: renormalise in float64, p = p.astype(np.float64); p /= p.sum()",
                expect="were not renormalised"),
        Mistake("greedy", lambda lg, k, rng: np.argmax(lg, axis=-1),
                "only the most likely token is ever drawn: that is greedy decoding; draw at random in "
                "proportion to the kept probabilities (rng.random or rng.choice)", expect="greedy"),
        Mistake("wrong_frequencies",
                lambda lg, k, rng: _sample_rows(softmax(keep_top(lg, k) / 2), rng),
                "tokens are drawn in the wrong proportions: draw each kept token with probability "
                "softmax(filtered logits), at temperature 1", expect="wrong proportions"),
    ),
    error_hints=(("do not sum to 1", "no_renormalise_choice"),),
    advice="keep the k largest logits, softmax over them, then draw one token per row with rng.",
)
