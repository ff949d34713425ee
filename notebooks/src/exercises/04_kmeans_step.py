# %% [markdown]
# # Exercise 4: one step of k-means
#
# iGPT's palette comes from k-means on pixels (notebook `01_palette.ipynb`). You will write one
# Lloyd iteration, the step `minigpt_pixels.palette.fit_palette` repeats until the centres stop
# moving, then run it on a photo.
#
# **How this works.** Each exercise is a function with `# YOUR CODE HERE`. Replace the
# `raise NotImplementedError` with your code, run that cell, then run the `check` cell under it.
# `check(name, function)` runs your function on a few small seeded inputs, compares it with the package's
# own function, and tells you what is wrong: the shape, the first differing values, and the likely
# mistake. Until you start it says *not done yet*, so the notebook always runs top to bottom.
#
# Rules of the game: NumPy only, keep everything `float32`, and never change the input arrays in place.
# `describe(name)` lists what an exercise is checked on. Your teacher grades the functions
# themselves, on inputs you have not seen: write everything a function needs inside its cell
# (or in a cell of your own that only defines helper functions), without the package's own functions.

# %%
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from minigpt_pixels.exercises import check, describe


# %% [markdown]
# ## One Lloyd iteration
#
# Pixels are `[N, 3]` points in the model's `[-1, 1]` colour space, centres are `[K, 3]`.
#
# 1. **Assign**: each pixel goes to its nearest centre by squared Euclidean distance
#    $\sum_c (p_c - m_c)^2$ (the lowest index wins a tie, as `np.argmin` does).
# 2. **Update**: each centre moves to the mean of its pixels.
# 3. **Empty clusters**: a centre no pixel chose would be `0/0 = NaN`. Like `fit_palette`,
#    move it to the pixel that is farthest from its own nearest centre (the worst-served
#    pixel), so no colour is wasted. (The grader has at most one empty cluster per case.)
#
# <details><summary>Hint</summary>
#
# `pixels[:, None, :] - centres[None, :, :]` is `[N, K, 3]`; sum its squares over the last
# axis for the `[N, K]` distances. `np.argmin(d, axis=1)` assigns.
# </details>

# %%
def kmeans_step(pixels, centres):
    """One k-means (Lloyd) iteration as palette.fit_palette runs it.

    pixels:  float32 [N, 3]
    centres: float32 [K, 3]
    returns  float32 [K, 3], the new centres
    """
    ### BEGIN SOLUTION
    d = np.sum((pixels[:, None, :] - centres[None, :, :]) ** 2, axis=-1)  # [N, K]
    ids = np.argmin(d, axis=1)  # [N]
    new = centres.copy()
    for j in range(len(centres)):
        mine = pixels[ids == j]
        if len(mine):
            new[j] = mine.mean(axis=0)
        else:  # empty: the pixel worst served by its nearest centre
            new[j] = pixels[np.argmax(d[np.arange(len(pixels)), ids])]
    return new
    ### END SOLUTION


# %%
kmeans_step_result = check("kmeans_step", kmeans_step)
### BEGIN HIDDEN TESTS
assert kmeans_step_result.passed, kmeans_step_result.message  # what nbgrader's autograde scores
### END HIDDEN TESTS
display(kmeans_step_result)

# %% [markdown]
# Once it passes: ten of your steps on a photo. The mean squared error (k-means' objective, `palette.inertia` / N) must go down at every step:

# %%
from sklearn.datasets import load_sample_images
from minigpt_pixels.palette import dequantize, inertia, quantize
from minigpt_pixels.processor import pixels_from_images, resize

if kmeans_step_result.passed:
    photo = resize(load_sample_images().images[1], 64, 96)  # [64, 96, 3] uint8
    pixels = pixels_from_images(photo)  # [N, 3] in [-1, 1]
    rng = np.random.default_rng(0)
    centres = pixels[rng.choice(len(pixels), 8, replace=False)]
    errors = []
    for _ in range(10):
        centres = kmeans_step(pixels, centres)
        errors.append(inertia(pixels, centres) / len(pixels))
    print("mean squared error per step:", np.round(errors, 4))
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3))
    a.imshow(photo); a.set_title("original"); a.axis("off")
    b.imshow(dequantize(quantize(pixels, centres), centres).reshape(photo.shape))
    b.set_title("8 colours, your k-means"); b.axis("off")
else:
    print("finish kmeans_step above first")
plt.show()

# %% [markdown]
# ### Your step inside the package's k-means
#
# `palette.fit_palette` (how the package fits a palette, the model's vocabulary) seeds its centres
# with k-means++ and then repeats one step until the centres stop moving. Below, your
# `kmeans_step` is that step (`unittest.mock.patch` swaps it in while the `with` block runs): the
# palette it fits should be the package's own.

# %%
from unittest import mock

from minigpt_pixels import palette

if kmeans_step_result.passed:
    theirs = palette.fit_palette(pixels, 16, seed=0)  # [16, 3]
    with mock.patch.object(palette, "lloyd_step", lambda p, c, exact=False: kmeans_step(p, c)):
        yours = palette.fit_palette(pixels, 16, seed=0)
    print(f"16-colour palette: max |yours - the package's| = {np.abs(yours - theirs).max():.1e}; mean squared "
          f"error {inertia(pixels, yours) / len(pixels):.5f} vs {inertia(pixels, theirs) / len(pixels):.5f}")
else:
    print("finish kmeans_step above first")

# %% [markdown]
# ## Summary
#
# Every exercise of this notebook, checked again:

# %%
for name, fn in [("kmeans_step", kmeans_step)]:
    print(check(name, fn))
