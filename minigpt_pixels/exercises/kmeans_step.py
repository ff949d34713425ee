"""Exercise: one Lloyd iteration of k-means, `palette.lloyd_step`, the step `fit_palette` repeats."""

import warnings

import numpy as np

from .. import palette
from .engine import F32, Case, Exercise, Mistake


def _kmeans(pixels, centres, dist="l2", empty="farthest", mean=np.mean):
    """A Lloyd step written out with the knobs students get wrong."""
    K = len(centres)
    diff = pixels[:, None, :] - centres[None]  # [N, K, 3]
    d = np.abs(diff).sum(-1) if dist == "l1" else np.square(diff).sum(-1)  # [N, K]
    ids = np.argmax(d, axis=1) if dist == "farthest" else np.argmin(d, axis=1)  # [N]
    new = centres.copy()
    for j in range(K):
        mine = pixels[ids == j]
        if len(mine):
            new[j] = mean(mine, axis=0)
        elif empty == "nan":
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                new[j] = np.mean(mine, axis=0)  # mean of nothing: NaN
        elif empty == "zero":
            new[j] = 0
        elif empty == "farthest":
            own = np.square(pixels - centres[np.argmin(np.square(diff).sum(-1), 1)]).sum(-1)  # [N]
            new[j] = pixels[np.argmax(own)]
        # empty == "stay": the centre keeps its place
    return new.astype(F32)


def _case(empty):
    def make(rng):
        pixels = rng.uniform(-1, 1, size=(120, 3)).astype(F32)  # [N, 3] in the model's [-1, 1] space
        centres = rng.uniform(-0.8, 0.8, size=(6, 3)).astype(F32)  # [K, 3]
        if empty:  # one centre far outside the pixels: no pixel chooses it
            centres[4] = np.array([3.0, -3.0, 3.0], F32)
        return pixels, centres
    return make


EXERCISE = Exercise(
    name="kmeans_step",
    signature="kmeans_step(pixels, centres)",
    returns="the new centres, float32 [K, 3]",
    reference=lambda pixels, centres: palette.lloyd_step(pixels, centres, exact=True),
    rtol=1e-5, atol=1e-5,
    points=3,
    cases=(Case("120 pixels, 6 centres", _case(empty=False)),
           Case("a centre that no pixel chooses (empty cluster)", _case(empty=True))),
    mistakes=(
        Mistake("l1_distance", lambda p, c: _kmeans(p, c, dist="l1"),
                "pixels went to the nearest centre by |dx| + |dy| + |dz| (L1); k-means uses the squared "
                "Euclidean distance, sum((pixel - centre)**2)"),
        Mistake("farthest", lambda p, c: _kmeans(p, c, dist="farthest"),
                "pixels went to their farthest centre: use argmin of the distances, not argmax"),
        Mistake("empty_nan", lambda p, c: _kmeans(p, c, empty="nan"),
                "an empty cluster: no pixel chose one centre, and the mean of no pixels is 0/0 = NaN. Move "
                "that centre to the pixel farthest from its nearest centre"),
        Mistake("empty_zero", lambda p, c: _kmeans(p, c, empty="zero"),
                "an empty cluster's centre was set to 0; move it to the pixel farthest from its nearest centre"),
        Mistake("empty_stays", lambda p, c: _kmeans(p, c, empty="stay"),
                "an empty cluster's centre stayed where it was (wasting a colour); fit_palette moves it to the "
                "pixel farthest from its nearest centre"),
        Mistake("median", lambda p, c: _kmeans(p, c, mean=np.median),
                "each centre moved to the median of its pixels; k-means moves it to their mean"),
        Mistake("no_update", lambda p, c: c.copy(), "the centres did not move: set each to the mean of its pixels"),
    ),
    advice="1. assign: ids = argmin over centres of sum((pixel - centre)**2); 2. update: each centre = mean "
           "of its pixels; 3. a centre with no pixels moves to the pixel farthest from its nearest centre.",
)
