"""Write the notebooks under notebooks/ from the cell sources held here (without outputs).

    python scripts/build_notebooks.py        # rewrite every notebook's cells (outputs are dropped)
    python scripts/run_notebooks.py          # rebuild, then execute them all in place (outputs kept)

The .ipynb files are what people open; this script is where their cells are edited, so that a
change reaches every notebook the same way and tests/test_notebooks.py can check the files on disk
match it. Cell ids are fixed (notebook stem + number), so rebuilding gives the same bytes.

Notebooks import minigpt_pixels and never re-implement it; the exercise skeletons are the one
exception (writing the function is the student's job), and their solutions sit beside them.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import textwrap

import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def cell(kind, source, cell_id):
    source = textwrap.dedent(source).strip("\n")
    if kind == "md":
        c = nbformat.v4.new_markdown_cell(source)
    else:
        if "plt." in source and "def " not in source and not source.endswith("plt.show()"):
            source += "\nplt.show()"  # a drawing cell: show the figure here, without the repr of the last call
        c = nbformat.v4.new_code_cell(source)
    c["id"] = cell_id
    return c


def notebook(stem, cells):
    nb = nbformat.v4.new_notebook()
    nb["cells"] = [cell(kind, src, f"{stem[:40]}-{i:02d}") for i, (kind, src) in enumerate(cells)]
    nb["metadata"] = {"kernelspec": KERNELSPEC, "language_info": {"name": "python"}}
    return nb


def md(text):
    return ("md", text)


def code(text):
    return ("code", text)


# Everything below main() holds the cell sources: WALKTHROUGHS (notebooks/NN_*.ipynb) and
# EXERCISE_NOTEBOOKS (notebooks/exercises/ and their solutions/).


def all_notebooks():
    """{path relative to the repository root: notebook (no outputs)} for every notebook we ship."""
    out = {}
    for name, cells in sorted(WALKTHROUGHS.items()):
        out[f"notebooks/{name}"] = notebook(pathlib.Path(name).stem, cells)
    for name, (skeleton, solution) in sorted(EXERCISE_NOTEBOOKS.items()):
        out[f"notebooks/exercises/{name}"] = notebook(pathlib.Path(name).stem, skeleton)
        out[f"notebooks/exercises/solutions/{name}"] = notebook("sol-" + pathlib.Path(name).stem, solution)
    return out


def sources(nb):
    """What the builder owns in a notebook: each cell's type, id and source (not outputs or counts)."""
    return [(c["cell_type"], c.get("id"), c["source"]) for c in nb["cells"]]


def write(path, nb):
    path = ROOT / path
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.validate(nb)
    tmp = path.with_suffix(".ipynb.tmp")
    tmp.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    tmp.replace(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if a notebook's cells differ from this script's")
    args = ap.parse_args(argv)
    stale = []
    for path, nb in all_notebooks().items():
        if args.check:
            on_disk = ROOT / path
            if not on_disk.exists() or sources(nbformat.read(on_disk, as_version=4)) != sources(nb):
                stale.append(path)
        else:
            write(path, nb)
            print(f"wrote {path}")
    if stale:
        print("out of date (run python scripts/build_notebooks.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


# ==================================================================================================
# The exercises: one spec per notebook gives both the skeleton (for students) and the solution.
# ==================================================================================================
HOW_IT_WORKS = """
**How this works.** Each exercise is a function with `# YOUR CODE HERE`. Replace the
`raise NotImplementedError` with your code, run that cell, then run the `check` cell under it.
`check(name, function)` runs your function on a few small seeded inputs, compares it with the package's
own function, and tells you what is wrong: the shape, the first differing values, and the likely
mistake. Until you start it says *not done yet*, so the notebook always runs top to bottom.

Rules of the game: NumPy only, keep everything `float32`, and never change the input arrays in place.
`describe(name)` lists what an exercise is checked on.
"""


def exercise(name, explanation, header, solution, after=()):
    """One exercise: its explanation, the function (skeleton or solution), the check, then cells that
    use the function once it passes."""
    header = textwrap.dedent(header).strip("\n")
    skeleton_src = header + "\n    # YOUR CODE HERE\n    raise NotImplementedError"
    solution_src = header + "\n" + textwrap.indent(textwrap.dedent(solution).strip("\n"), "    ")
    check_src = f'{name}_result = check("{name}", {name})\n{name}_result'
    return {"name": name, "md": explanation, "skeleton": skeleton_src, "solution": solution_src,
            "check": check_src, "after": list(after)}


def exercise_notebook(title, intro, setup, parts):
    """-> (skeleton cells, solution cells)."""
    names = [p["name"] for p in parts]
    summary = ("for name, fn in [" + ", ".join(f'("{n}", {n})' for n in names) + "]:\n"
               "    print(check(name, fn))")
    out = []
    for solved in (False, True):
        cells = [md(f"# {title}\n\n{textwrap.dedent(intro).strip()}\n\n{HOW_IT_WORKS.strip()}"
                    + ("\n\n*This is the solution notebook, for teachers.*" if solved else "")),
                 code(setup)]
        for p in parts:
            cells += [md(p["md"]), code(p["solution"] if solved else p["skeleton"]), code(p["check"])]
            cells += p["after"]
        cells += [md("## Summary\n\nEvery exercise of this notebook, checked again:"), code(summary)]
        if solved:
            cells.append(code("assert all(check(name, fn) for name, fn in [" +
                              ", ".join(f'("{n}", {n})' for n in names) + "])  # the solutions pass"))
        out.append(cells)
    return tuple(out)


EX_SETUP = """
import numpy as np
import matplotlib.pyplot as plt

from minigpt_pixels.exercises import check, describe
"""

EXERCISE_NOTEBOOKS = {}

EXERCISE_NOTEBOOKS["01_layer_norm_and_quick_gelu.ipynb"] = exercise_notebook(
    "Exercise 1: ImageGPT's layer norm and quick_gelu",
    """
    Two of the smallest pieces of ImageGPT, each with a quirk that trips people up. You will write
    them from scratch and check them against `minigpt_pixels.layers.layer_norm` and
    `minigpt_pixels.layers.quick_gelu` (which agree with Hugging Face transformers).
    Background: notebook `02_transformer_piece_by_piece.ipynb`.
    """,
    EX_SETUP,
    [
        exercise(
            "layer_norm",
            r"""
            ## 1. Layer norm without the mean

            ImageGPT's layer norm is **not** `torch.nn.LayerNorm`. It does not subtract the mean and has
            no bias; it divides each position's features by their root mean square and multiplies by a
            learned gain:

            $$y = \frac{x}{\sqrt{\operatorname{mean}(x^2) + \epsilon}} \cdot w$$

            The mean is over the last axis (the `C` features of one position), so `x` of shape
            `[B, T, C]` gives one number per `(b, t)`. (Today this is called RMSNorm.)

            <details><summary>Hint</summary>

            `np.mean(x ** 2, axis=-1, keepdims=True)` has shape `[..., 1]`, which broadcasts against
            `[..., C]`. `eps` goes inside the square root.
            </details>
            """,
            '''
            def layer_norm(x, weight, eps=1e-5):
                """ImageGPT's layer norm; replaces minigpt_pixels.layers.layer_norm.

                x:      float32 [..., C]  normalise each row over its last axis
                weight: float32 [C]       the learned gain (there is no bias)
                eps:    float             added to the mean square, inside the square root
                returns float32 [..., C]
                """
            ''',
            """
            ms = np.mean(np.square(x), axis=-1, keepdims=True)  # [..., 1]
            return x / np.sqrt(ms + eps) * weight  # [..., C]
            """,
            after=[md("Once it passes: unlike torch's LayerNorm, the rows keep their mean; it is their "
                      "root mean square that becomes 1 (here the gain is 1)."),
                   code("""
                   if layer_norm_result.passed:
                       x = np.random.default_rng(0).normal(2.0, 1.0, size=(3, 8)).astype(np.float32)
                       y = layer_norm(x, np.ones(8, np.float32))
                       print("row means:", y.mean(-1).round(3), " root mean squares:", np.sqrt((y ** 2).mean(-1)).round(3))
                   else:
                       print("finish layer_norm above first")
                   """)],
        ),
        exercise(
            "quick_gelu",
            r"""
            ## 2. quick_gelu

            The MLP's activation is OpenAI's "gelu2", which transformers calls `quick_gelu`:

            $$\text{quick\_gelu}(x) = x \cdot \sigma(1.702\,x) = \frac{x}{1 + e^{-1.702 x}}$$

            It approximates GELU, but it is **not** the exact GELU $x\,\Phi(x)$ (with `erf`), nor
            GPT-2's tanh approximation. The differences are small (at most about 0.02) yet they change
            every output of a trained model.
            """,
            '''
            def quick_gelu(x):
                """x * sigmoid(1.702 * x); replaces minigpt_pixels.layers.quick_gelu.

                x:      float32 array of any shape
                returns float32, the same shape
                """
            ''',
            """
            return x / (1 + np.exp(-1.702 * x))
            """,
            after=[md("Once it passes, compare it with the exact GELU and ReLU:"),
                   code("""
                   from minigpt_pixels import layers

                   if quick_gelu_result.passed:
                       x = np.linspace(-4, 4, 201, dtype=np.float32)
                       fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3))
                       a.plot(x, quick_gelu(x), label="your quick_gelu")
                       a.plot(x, layers.activation(x, "gelu"), "--", label="exact GELU")
                       a.plot(x, np.maximum(x, 0), ":", label="ReLU")
                       a.legend()
                       b.plot(x, quick_gelu(x) - layers.activation(x, "gelu"))
                       b.set_title("quick_gelu - exact GELU")
                       plt.tight_layout()
                   else:
                       print("finish quick_gelu above first")
                   """)],
        ),
    ],
)

EXERCISE_NOTEBOOKS["02_causal_attention_and_kv_cache.ipynb"] = exercise_notebook(
    "Exercise 2: causal attention and the KV cache",
    """
    The heart of the transformer, then the trick that makes sampling fast. You will check them
    against `minigpt_pixels.layers.attention` and the model's `KVCache`.
    Background: notebooks `02_transformer_piece_by_piece.ipynb` and `03_sampling.ipynb`.

    Shapes: `B` batch, `H` heads, `T` new positions (queries), `S` keys, `D` head size.
    """,
    EX_SETUP,
    [
        exercise(
            "causal_attention",
            r"""
            ## 1. Causal self-attention

            For each head: scores $= \text{scale} \cdot q k^\top$ (`[B, H, T, S]`); position `t` may
            only look at keys `0..t`, so every score above the diagonal is set to `-inf` (or a very
            negative number) **before** the softmax; the softmax runs over the keys (the last axis);
            the output is the weights times `v`.

            $$\text{out} = \operatorname{softmax}\big(\text{scale}\cdot q k^\top + \text{mask}\big)\, v$$

            Use the `scale` you are given: it is $1/\sqrt{D}$, but iGPT configs can also divide it by
            the layer number. And make the softmax safe: `exp` of a score above ~88 overflows float32,
            so subtract each row's maximum first (it cancels out).

            <details><summary>Hint</summary>

            `np.tri(T, S, dtype=bool)` is True on and below the diagonal. `np.where(allowed, scores, -np.inf)`.
            `np.swapaxes(k, -1, -2)` transposes the last two axes.
            </details>
            """,
            '''
            def causal_attention(q, k, v, scale):
                """Causal scaled dot-product attention; replaces layers.attention(q, k, v, scale).

                q, k, v: float32 [B, H, T, D]
                scale:   float, multiplies q @ k^T
                returns  float32 [B, H, T, D] (returning (output, weights) as layers.attention does is fine too)
                """
            ''',
            """
            T, S = q.shape[-2], k.shape[-2]
            scores = (q @ np.swapaxes(k, -1, -2)) * scale  # [B, H, T, S]
            scores = np.where(np.tri(T, S, k=S - T, dtype=bool), scores, -np.inf)
            weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
            weights = weights / weights.sum(axis=-1, keepdims=True)  # [B, H, T, S]
            return weights @ v  # [B, H, T, D]
            """,
            after=[md("A trick to see the weights: with `v` the identity matrix, the output *is* the weight "
                      "matrix. Each row sums to 1 and nothing lies above the diagonal:"),
                   code("""
                   if causal_attention_result.passed:
                       rng = np.random.default_rng(0)
                       T = 8
                       q, k = rng.normal(size=(2, 1, 1, T, 4)).astype(np.float32)
                       eye = np.eye(T, dtype=np.float32)[None, None]  # v = I, so out = weights
                       weights = causal_attention(q, k, eye, 0.5)
                       weights = weights[0] if isinstance(weights, tuple) else weights
                       plt.imshow(weights[0, 0], cmap="viridis")
                       plt.xlabel("key position"); plt.ylabel("query position"); plt.colorbar()
                   else:
                       print("finish causal_attention above first")
                   """)],
        ),
        exercise(
            "kv_cache_step",
            r"""
            ## 2. One step with a KV cache

            When sampling, the model has already processed `P` positions and gets `T` new ones (usually
            one). Recomputing keys and values for the old positions would be wasted work, so the model
            keeps them: the **KV cache**. A step appends the new keys and values to the cache, then the
            new queries attend to everything cached so far.

            The catch is the mask. The new queries are positions `P .. P+T-1`, not `0 .. T-1`: query
            `t` may see keys `0 .. P+t`. With `S = P + T` keys that is `np.tri(T, S, k=S - T)`.
            (Your `causal_attention` above already handles `S > T` if you wrote it that way.)

            Return the output and the grown cache: `(out [B, H, T, D], keys [B, H, P+T, D], values [B, H, P+T, D])`.
            """,
            '''
            def kv_cache_step(q, k, v, past_k, past_v, scale):
                """Append the new keys and values to the cache, then attend; replaces KVCache.update + layers.attention.

                q, k, v:        float32 [B, H, T, D]  the T new positions (they are positions P .. P+T-1)
                past_k, past_v: float32 [B, H, P, D]  the cache so far (P may be 0)
                scale:          float
                returns (out [B, H, T, D], keys [B, H, P+T, D], values [B, H, P+T, D]), float32
                """
            ''',
            """
            keys = np.concatenate([past_k, k], axis=2)  # [B, H, S, D], S = P + T
            values = np.concatenate([past_v, v], axis=2)
            T, S = q.shape[2], keys.shape[2]
            scores = (q @ np.swapaxes(keys, -1, -2)) * scale  # [B, H, T, S]
            scores = np.where(np.tri(T, S, k=S - T, dtype=bool), scores, -np.inf)
            weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
            weights = weights / weights.sum(axis=-1, keepdims=True)
            return weights @ values, keys, values
            """,
            after=[md("The point of the cache: a prompt of 4 positions, then one position at a time, gives "
                      "exactly what attention over all 6 positions at once gives:"),
                   code("""
                   from minigpt_pixels import layers

                   if kv_cache_step_result.passed:
                       rng = np.random.default_rng(1)
                       q, k, v = rng.normal(size=(3, 1, 2, 6, 4)).astype(np.float32)  # 6 positions
                       full, _ = layers.attention(q, k, v, 0.5)  # all at once, the package's reference
                       empty = np.zeros((1, 2, 0, 4), np.float32)
                       out, keys, values = kv_cache_step(q[:, :, :4], k[:, :, :4], v[:, :, :4], empty, empty, 0.5)
                       steps = [out]
                       for t in (4, 5):
                           out, keys, values = kv_cache_step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], keys, values, 0.5)
                           steps.append(out)
                       print("max difference:", np.abs(np.concatenate(steps, axis=2) - full).max())
                   else:
                       print("finish kv_cache_step above first")
                   """)],
        ),
    ],
)

EXERCISE_NOTEBOOKS["03_top_k_sampling.ipynb"] = exercise_notebook(
    "Exercise 3: top-k sampling",
    """
    How a model's scores become a picture: keep only the `k` most likely colours, then draw one.
    You will check your versions against `minigpt_pixels.generation.top_k_filter` and
    `sample_from_logits`. Background: notebook `03_sampling.ipynb`.
    """,
    EX_SETUP,
    [
        exercise(
            "top_k_filter",
            r"""
            ## 1. The top-k filter

            Given logits `[B, V]` (one row of scores per sequence), keep the `k` largest of each row and
            set the others to `-inf`, so that softmax gives them probability 0. As in transformers, a
            logit **equal** to the k-th largest is kept too (ties are not broken).

            <details><summary>Hint</summary>

            The k-th largest of each row: `np.sort(logits, axis=-1)[:, -k]` (or `np.partition`). Then
            `np.where(logits < kth[:, None], -np.inf, logits)`.
            </details>
            """,
            '''
            def top_k_filter(logits, k):
                """Keep the k largest logits of each row, -inf elsewhere; replaces generation.top_k_filter.

                logits: float32 [B, V]
                k:      int, 1 <= k <= V
                returns float32 [B, V]
                """
            ''',
            """
            kth = np.sort(logits, axis=-1)[:, -k][:, None]  # [B, 1] the k-th largest
            return np.where(logits < kth, np.float32(-np.inf), logits)
            """,
        ),
        exercise(
            "top_k_sample",
            r"""
            ## 2. Drawing a token

            Now draw one token per row from the filtered distribution: softmax over the kept logits
            (which renormalises them to sum to 1), then a random draw with the generator `rng` you are
            given (`rng.random`, `rng.choice`, ...). The grader draws 9000 tokens and checks that only
            top-k tokens come out, each about as often as its probability says.

            <details><summary>Hint</summary>

            One way: `p = softmax(filtered)` per row, `cdf = np.cumsum(p, axis=-1)`, `u = rng.random(B)`,
            and the token is the first index where `cdf > u`. Another: a loop over rows with
            `rng.choice(V, p=row_p)`. Zeroing the other probabilities without dividing by the
            kept total is the classic mistake.
            </details>
            """,
            '''
            def top_k_sample(logits, k, rng):
                """One token per row from softmax over the row's k largest logits; replaces
                generation.sample_from_logits(logits, rng, top_k=k).

                logits: float32 [B, V]
                k:      int
                rng:    np.random.Generator, the only source of randomness
                returns int array [B]
                """
            ''',
            """
            kth = np.sort(logits, axis=-1)[:, -k][:, None]
            kept = np.where(logits < kth, -np.inf, logits)  # [B, V]
            p = np.exp(kept - kept.max(axis=-1, keepdims=True))
            p = p / p.sum(axis=-1, keepdims=True)  # renormalised over the kept tokens
            u = rng.random(len(logits))[:, None]  # [B, 1]
            return np.minimum((np.cumsum(p, axis=-1) <= u).sum(axis=-1), logits.shape[-1] - 1)
            """,
            after=[md("Once it passes: your draws against the probabilities, for one row of logits and a few `k`:"),
                   code("""
                   from minigpt_pixels.generation import softmax, top_k_filter as reference_filter

                   if top_k_sample_result.passed:
                       row = np.array([2.0, 1.5, 1.2, 0.8, 0.5, 0.0, -0.5, -1.0], np.float32)
                       fig, axes = plt.subplots(1, 3, figsize=(11, 2.6), sharey=True)
                       for ax, k in zip(axes, [1, 3, 8]):
                           draws = top_k_sample(np.repeat(row[None], 4000, axis=0), k, np.random.default_rng(0))
                           ax.bar(np.arange(8) - 0.2, softmax(reference_filter(row[None], k))[0], 0.4, label="probability")
                           ax.bar(np.arange(8) + 0.2, np.bincount(draws, minlength=8) / 4000, 0.4, label="your draws")
                           ax.set_title(f"k = {k}")
                       axes[0].legend()
                   else:
                       print("finish top_k_sample above first")
                   """)],
        ),
    ],
)

EXERCISE_NOTEBOOKS["04_kmeans_step.ipynb"] = exercise_notebook(
    "Exercise 4: one step of k-means",
    """
    iGPT's palette comes from k-means on pixels (notebook `01_palette.ipynb`). You will write one
    Lloyd iteration, the step `minigpt_pixels.palette.fit_palette` repeats until the centres stop
    moving, then run it on a photo.
    """,
    EX_SETUP,
    [
        exercise(
            "kmeans_step",
            r"""
            ## One Lloyd iteration

            Pixels are `[N, 3]` points in the model's `[-1, 1]` colour space, centres are `[K, 3]`.

            1. **Assign**: each pixel goes to its nearest centre by squared Euclidean distance
               $\sum_c (p_c - m_c)^2$ (the lowest index wins a tie, as `np.argmin` does).
            2. **Update**: each centre moves to the mean of its pixels.
            3. **Empty clusters**: a centre no pixel chose would be `0/0 = NaN`. Like `fit_palette`,
               move it to the pixel that is farthest from its own nearest centre (the worst-served
               pixel), so no colour is wasted. (The grader has at most one empty cluster per case.)

            <details><summary>Hint</summary>

            `pixels[:, None, :] - centres[None, :, :]` is `[N, K, 3]`; sum its squares over the last
            axis for the `[N, K]` distances. `np.argmin(d, axis=1)` assigns.
            </details>
            """,
            '''
            def kmeans_step(pixels, centres):
                """One k-means (Lloyd) iteration as palette.fit_palette runs it.

                pixels:  float32 [N, 3]
                centres: float32 [K, 3]
                returns  float32 [K, 3], the new centres
                """
            ''',
            """
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
            """,
            after=[md("Once it passes: ten of your steps on a photo. The mean squared error (k-means' "
                      "objective, `palette.inertia` / N) must go down at every step:"),
                   code("""
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
                   """)],
        ),
    ],
)

EXERCISE_NOTEBOOKS["05_layer_norm_backward.ipynb"] = exercise_notebook(
    "Exercise 5: a backward pass (layer norm)",
    """
    Training needs the gradient of the loss with respect to every input and weight. In
    `minigpt_pixels.layers` every component is a pair: `f_forward(...) -> (out, cache)` keeps what the
    backward needs, `f_backward(dout, cache)` turns the gradient of the output into gradients of the
    inputs. You will write ImageGPT's layer-norm backward. Background: notebook `05_training.ipynb`.
    """,
    EX_SETUP,
    [
        exercise(
            "layer_norm_backward",
            r"""
            ## The layer-norm backward

            The forward is $y = n \cdot w$ with $n = x / r$ and $r = \sqrt{\operatorname{mean}(x^2) + \epsilon}$
            (per row, over the last axis of size $C$). `layers.layer_norm_forward(x, weight)` returns
            `(y, cache)` with `cache = (n, weight, rms)`: the normalised input `n`, the weight, and `rms`
            of shape `[..., 1]`.

            Given `dout` $= \partial L / \partial y$:

            * `dweight`: every position used the same weight, so sum $\text{dout} \cdot n$ over all
              positions: shape `[C]`.
            * `dx`: with $g = \text{dout} \cdot w$, the direct path gives $g / r$, **but** $r$ depends on
              every $x$ of the row too. Working it out:
              $$dx = \frac{g - n \cdot \operatorname{mean}(g \cdot n)}{r}$$
              (Compared with torch's LayerNorm, there is no $-\operatorname{mean}(g)$ term: nothing was centred.)
            """,
            '''
            def layer_norm_backward(dout, cache):
                """Gradients of ImageGPT's layer norm; replaces layers.layer_norm_backward.

                dout:  float32 [..., C]  the gradient of the loss w.r.t. the output
                cache: (n [..., C], weight [C], rms [..., 1]) from layers.layer_norm_forward; n = x / rms
                returns (dx [..., C], dweight [C]), float32
                """
            ''',
            """
            n, weight, rms = cache
            g = dout * weight  # [..., C]
            dx = (g - n * np.mean(g * n, axis=-1, keepdims=True)) / rms
            dweight = np.sum((dout * n).reshape(-1, n.shape[-1]), axis=0)  # [C]
            return dx, dweight
            """,
            after=[md("Once it passes, check it the way gradients are always checked: against finite "
                      "differences, $\\partial L/\\partial x_i \\approx (L(x + h e_i) - L(x - h e_i)) / 2h$, "
                      "in float64 so the subtraction keeps its digits:"),
                   code("""
                   from minigpt_pixels import layers

                   if layer_norm_backward_result.passed:
                       rng = np.random.default_rng(0)
                       x = rng.normal(size=(2, 6)).astype(np.float32)
                       w = rng.normal(1, 0.2, size=6).astype(np.float32)
                       dout = rng.normal(size=(2, 6)).astype(np.float32)
                       y, cache = layers.layer_norm_forward(x, w)
                       dx, dw = layer_norm_backward(dout, cache)

                       def loss(x64):  # L = sum(dout * layer_norm(x)), so dL/dy = dout
                           return float(np.sum(dout * layers.layer_norm(x64, w.astype(np.float64))))

                       h, numeric = 1e-6, np.zeros(x.shape)
                       for i in np.ndindex(x.shape):
                           e = np.zeros(x.shape); e[i] = h
                           numeric[i] = (loss(x + e) - loss(x - e)) / (2 * h)
                       print("max |your dx - finite differences| =", np.abs(dx - numeric).max())
                   else:
                       print("finish layer_norm_backward above first")
                   """)],
        ),
    ],
)


# ==================================================================================================
# The walkthroughs
# ==================================================================================================
WALKTHROUGHS = {}

WALKTHROUGHS["01_palette.ipynb"] = [
    md("""
    # 1. Palettes: how iGPT turns a photo into tokens

    ImageGPT never sees red, green and blue values. Each pixel becomes **one token**: the number of the
    nearest colour in a palette of 512 colours, found by k-means clustering of real pixels. Why not RGB?
    Predicting 256 levels for each of 3 channels would triple the sequence (32 x 32 x 3 = 3072 tokens),
    and a softmax over all 256^3 = 16.7 million colours is far too big. 512 colours (9 bits) keep one
    token per pixel, at the price of losing some colour.

    This notebook: k-means on real photos, the quantized image beside the original, the error against
    the number of colours, and what iGPT actually sees at 32 x 32 with its 512-colour palette.
    Everything comes from `minigpt_pixels.palette` and `minigpt_pixels.processor`.
    """),
    code("""
    import time

    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.datasets import load_sample_images

    from minigpt_pixels.palette import dequantize, fit_palette, inertia, load_palette, quantize
    from minigpt_pixels.processor import ImageGPTImageProcessor, pixels_from_images, resize

    plt.rcParams["image.interpolation"] = "nearest"  # draw every pixel as a square, not smoothed
    """),
    md("""
    ## Real photos, as the model's pixels

    scikit-learn ships two photos (so this runs offline). We shrink them so k-means takes a second, not a
    minute. The palette lives in the model's pixel space: each channel rescaled to [0, 1], then normalised
    with mean 0.5 and std 0.5 to **[-1, 1]**, exactly as the image processor does.
    """),
    code("""
    photos = [resize(p, 107, 160) for p in load_sample_images().images]  # 2 x [107, 160, 3] uint8
    pixels = pixels_from_images(photos)  # [N, 3] float32 in [-1, 1]
    print(pixels.shape, pixels.dtype, pixels.min(), pixels.max())

    fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
    for ax, p in zip(axes, photos):
        ax.imshow(p); ax.axis("off")
    """),
    md("""
    ## k-means palettes of different sizes

    `fit_palette(pixels, k)` runs k-means: seed `k` centres with k-means++, then alternate *assign every
    pixel to its nearest centre* and *move every centre to the mean of its pixels* until the centres stop
    moving. (You can write that step yourself in `exercises/04_kmeans_step.ipynb`.)
    """),
    code("""
    palettes = {}
    for k in [2, 4, 8, 16, 64]:
        start = time.perf_counter()
        palettes[k] = fit_palette(pixels, k, seed=0)  # [k, 3] in [-1, 1]
        print(f"{k:3d} colours in {time.perf_counter() - start:.2f} s")
    """),
    md("""
    Quantizing is the processor's job: each pixel becomes the id of its nearest palette colour
    (`input_ids`), and `decode` maps ids back to RGB. Here at the photos' own size (no resizing):
    """),
    code("""
    fig, axes = plt.subplots(2, 1 + len(palettes), figsize=(13, 3.5))
    for row, photo in enumerate(photos):
        axes[row, 0].imshow(photo); axes[row, 0].set_title("original")
        for ax, (k, clusters) in zip(axes[row, 1:], palettes.items()):
            processor = ImageGPTImageProcessor(clusters=clusters, size={"height": 107, "width": 160}, do_resize=False)
            ids = processor(photo)["input_ids"]  # [1, 107 * 160] palette ids
            ax.imshow(processor.decode(ids)[0]); ax.set_title(f"{k} colours")
    for ax in axes.flat:
        ax.axis("off")
    plt.tight_layout()
    """),
    md("""
    ## Error against the number of colours

    k-means minimises the *inertia*: the summed squared distance from each pixel to its colour. Per pixel
    and per channel, in 0..255 units, that is a mean squared error, and the usual picture-quality number
    is PSNR = 10 log10(255^2 / MSE). Each doubling of the palette buys about the same few dB:
    """),
    code("""
    ks = [1, 2, 4, 8, 16, 32, 64, 128]
    mse = []
    for k in ks:
        clusters = palettes.get(k)
        if clusters is None:
            clusters = fit_palette(pixels, k, seed=0, max_iter=50)
        # inertia is in [-1, 1] units per pixel (3 channels): to 0..255 units per channel
        mse.append(inertia(pixels, clusters) / len(pixels) / 3 * 127.5 ** 2)
    psnr = 10 * np.log10(255 ** 2 / np.array(mse))
    for k, e, p in zip(ks, mse, psnr):
        print(f"{k:4d} colours: MSE {e:8.1f}   PSNR {p:5.1f} dB")

    plt.figure(figsize=(5, 3))
    plt.semilogx(ks, psnr, "o-", base=2)
    plt.xlabel("colours in the palette"); plt.ylabel("PSNR (dB)"); plt.grid(alpha=0.3)
    plt.title("quantization error of the two photos")
    """),
    md("""
    ## What iGPT sees: 32 x 32 pixels, 512 colours

    The package ships a 512-colour palette fitted the same way to sample photos (`load_palette()`; a real
    checkpoint brings its own palette in `preprocessor_config.json`). The processor resizes to 32 x 32,
    normalises, and quantizes: **1024 tokens per image**, and the transformer models that sequence,
    left to right, top to bottom.
    """),
    code("""
    clusters = load_palette()  # [512, 3] in [-1, 1]
    colours = dequantize(np.arange(len(clusters)), clusters)  # [512, 3] uint8
    order = np.argsort(colours @ np.array([0.299, 0.587, 0.114]))  # dark to light

    processor = ImageGPTImageProcessor(clusters=clusters)  # size 32 x 32, as the iGPT checkpoints
    ids = processor(photos)["input_ids"]  # [2, 1024], no start-of-sequence token
    print(processor)
    print("ids:", ids.shape, ids.dtype, "first 12 tokens of the first photo:", ids[0, :12])

    fig, axes = plt.subplots(1, 5, figsize=(15, 3))
    axes[0].imshow(colours[order].reshape(16, 32, 3)); axes[0].set_title("the 512 colours")
    for i, photo in enumerate(photos):
        small = resize(photo, 32, 32)
        axes[1 + 2 * i].imshow(small); axes[1 + 2 * i].set_title("32 x 32")
        axes[2 + 2 * i].imshow(processor.decode(ids[i:i + 1])[0]); axes[2 + 2 * i].set_title("32 x 32, 512 colours")
    for ax in axes:
        ax.axis("off")
    """),
    md("""
    **Summary.** A pixel goes from 24 bits of RGB to one 9-bit token. The sequence the model reads is
    the image's tokens in raster order, and (a quirk to remember) the processor does **not** add the
    start-of-sequence token: the causal model's users prepend `SOS = vocab_size - 1` themselves.
    Next: `02_transformer_piece_by_piece.ipynb`.
    """),
]

WALKTHROUGHS["02_transformer_piece_by_piece.ipynb"] = [
    md("""
    # 2. The transformer, piece by piece

    ImageGPT is GPT-2 with a few quirks. This notebook runs a small model one component at a time with
    the pure NumPy functions of `minigpt_pixels.layers`, prints every shape, and checks each
    intermediate result against what Hugging Face transformers computed for the same weights and inputs
    (the golden fixture `tests/golden/models/causal_small`, written by `scripts/make_goldens.py`).
    At the end, the attention of the trained default model is drawn on the image grid.

    Shape legend: `B` batch, `T` positions, `C` width (`n_embd`), `H` heads, `D = C / H`, `V` palette size.
    """),
    code("""
    import matplotlib.pyplot as plt
    import numpy as np

    from minigpt_pixels import DEFAULT_MODEL, layers
    from minigpt_pixels.model import ImageGPTForCausalImageModeling, ImageGPTForImageClassification

    GOLDEN = "../tests/golden/models"  # relative to notebooks/
    model = ImageGPTForCausalImageModeling.from_pretrained(f"{GOLDEN}/causal_small")
    golden = np.load(f"{GOLDEN}/causal_small/outputs.npz")  # transformers' outputs for these weights
    cfg, p = model.config, model.params
    print(f"vocab_size {cfg.vocab_size} (16 colours + SOS), n_positions {cfg.n_positions}, n_embd {cfg.n_embd}, "
          f"n_layer {cfg.n_layer}, n_head {cfg.n_head}, activation {cfg.activation_function}")

    TOL = 1e-4  # float32 sums in a different order differ by ~1e-6; 1e-4 leaves room, and catches any real bug

    def compare(name, ours, theirs):
        diff = float(np.max(np.abs(ours - theirs)))
        print(f"{name:34s} shape {str(ours.shape):14s} max |ours - transformers| = {diff:.1e}")
        assert ours.shape == theirs.shape and diff < TOL, name
    """),
    md("""
    The weights are a flat dict keyed by transformers' own parameter names. Conv1D weights are stored
    `[in, out]`, so every linear layer is `x @ w + b`. One block's worth:
    """),
    code("""
    for name, w in p.items():
        if name.startswith("transformer.h.0.") or ".h." not in name:
            print(f"{name:36s} {str(w.shape):12s} {w.dtype}")
    """),
    md("""
    ## Embedding

    The input is a sequence of token ids: palette ids, after a start-of-sequence token `SOS = vocab_size - 1`
    (here 16, as this tiny model has 16 "colours"). Each id picks a row of `wte`, each position a row of `wpe`;
    they add up.
    """),
    code("""
    ids = golden["input_ids"]  # [B, T]
    B, T = ids.shape
    print("ids", ids.shape, "first row:", ids[0])

    x = layers.embedding(ids, p["transformer.wte.weight"], p["transformer.wpe.weight"], np.arange(T)[None])  # [B, T, C]
    compare("embedding = hidden_states[0]", x, golden["hidden_states.0"])
    """),
    md("""
    ## Layer norm, without the mean

    Quirk number one: ImageGPT's layer norm divides by the root mean square and multiplies by a weight.
    It does **not** subtract the mean and has **no bias** (what is now called RMSNorm). So the rows keep
    their mean, and it is their root mean square that becomes 1 (times the weight, here all ones):
    """),
    code("""
    w_ln1 = p["transformer.h.0.ln_1.weight"]  # [C]
    h = layers.layer_norm(x, w_ln1, cfg.layer_norm_epsilon)  # [B, T, C]
    print("row means       ", h.mean(-1)[0, :5].round(3))
    print("root mean square", np.sqrt((h ** 2).mean(-1))[0, :5].round(3), "(a little under 1: eps)")
    centred = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)  # torch's LayerNorm
    print(f"a mean-centring layer norm would differ by up to {np.abs(centred - h).max():.3f}")
    """),
    md("""
    ## Attention

    One matmul makes queries, keys and values for every head at once (`c_attn`, `[C, 3C]`). Each is split
    into `H` heads of size `D`. Scores `q k^T / sqrt(D)` above the diagonal are masked (a pixel only sees
    the pixels before it), a softmax turns each row into weights, and the weights average the values.
    """),
    code("""
    qkv = layers.linear(h, p["transformer.h.0.attn.c_attn.weight"], p["transformer.h.0.attn.c_attn.bias"])  # [B, T, 3C]
    C = cfg.n_embd
    q, k, v = (layers.split_heads(qkv[..., i * C:(i + 1) * C], cfg.n_head) for i in range(3))  # [B, H, T, D]
    print("qkv", qkv.shape, "-> q, k, v", q.shape)

    scale = layers.attention_scale(cfg.head_dim)  # 1 / sqrt(D)
    out, weights = layers.attention(q, k, v, scale, causal=True)  # [B, H, T, D], [B, H, T, T]
    compare("attention weights, layer 0", weights, golden["attentions.0"])

    fig, axes = plt.subplots(1, cfg.n_head, figsize=(12, 3))
    for head, ax in enumerate(axes):
        ax.imshow(weights[0, head], cmap="viridis"); ax.set_title(f"head {head}")
        ax.set_xlabel("key")
    axes[0].set_ylabel("query")
    plt.suptitle("causal attention weights of a freshly initialised model: lower-triangular, nearly uniform")
    plt.tight_layout()
    """),
    md("""
    The heads are merged back to `[B, T, C]`, projected (`c_proj`), and **added** to the residual stream.
    """),
    code("""
    a = layers.linear(layers.merge_heads(out), p["transformer.h.0.attn.c_proj.weight"], p["transformer.h.0.attn.c_proj.bias"])
    x1 = x + a  # [B, T, C] the residual stream after attention
    print("attention output", a.shape)
    """),
    md("""
    ## The MLP and quick_gelu

    Quirk number two: the MLP's activation is `quick_gelu(x) = x * sigmoid(1.702 x)` (OpenAI's "gelu2"),
    not the exact GELU. Close, but not the same numbers:
    """),
    code("""
    xs = np.linspace(-4, 4, 201, dtype=np.float32)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3))
    for name in ["quick_gelu", "gelu", "relu"]:
        left.plot(xs, layers.activation(xs, name), label=name)
    left.legend(); left.set_title("activations")
    right.plot(xs, layers.quick_gelu(xs) - layers.activation(xs, "gelu"))
    right.set_title("quick_gelu - exact GELU")
    plt.tight_layout()
    """),
    code("""
    m = layers.mlp(layers.layer_norm(x1, p["transformer.h.0.ln_2.weight"]),
                   p["transformer.h.0.mlp.c_fc.weight"], p["transformer.h.0.mlp.c_fc.bias"],      # [C, 4C]
                   p["transformer.h.0.mlp.c_proj.weight"], p["transformer.h.0.mlp.c_proj.bias"])  # [4C, C]
    x2 = x1 + m
    compare("block 0 by hand = hidden_states[1]", x2, golden["hidden_states.1"])

    block0, _ = layers.transformer_block(x, p, "transformer.h.0.", cfg, 0)  # the same, as one function
    compare("layers.transformer_block(block 0)", block0, golden["hidden_states.1"])
    """),
    md("""
    ## The rest of the stack, and the final layer norm

    Quirk number three: `hidden_states` has `n_layer + 1` entries (the embeddings, then one per block),
    and **the last one is taken after the final layer norm `ln_f`**. The output of the last block before
    `ln_f` is not in it.
    """),
    code("""
    hidden = x
    for i in range(cfg.n_layer):
        hidden, _ = layers.transformer_block(hidden, p, f"transformer.h.{i}.", cfg, i)
    final = layers.layer_norm(hidden, p["transformer.ln_f.weight"], cfg.layer_norm_epsilon)
    compare(f"after ln_f = hidden_states[{cfg.n_layer}]", final, golden[f"hidden_states.{cfg.n_layer}"])
    """),
    md("""
    ## The heads

    **Language-modelling head.** Quirk number four: `lm_head` has `vocab_size - 1` outputs and no bias.
    The model predicts palette colours only, never SOS, so the logits have 16 columns for a vocabulary of 17.
    The loss shifts inside: the logits at position `t` predict the token at `t + 1`; label -100 is ignored.
    """),
    code("""
    logits = layers.lm_head(final, p["lm_head.weight"])  # [B, T, C] @ [C, V] -> [B, T, V]
    compare("logits", logits, golden["logits"])
    loss = layers.lm_loss(logits, golden["labels"])
    compare("loss (nats per token)", np.asarray(loss), golden["loss"])

    out = model(ids, labels=golden["labels"])  # the whole model in one call gives the same
    compare("model(ids).logits", out.logits, golden["logits"])
    """),
    md("""
    **Classification head.** Quirk number five: `ImageGPTForImageClassification` averages the final
    hidden state over **every** position (it ignores `attention_mask` when pooling), then applies a
    linear layer without bias. Checked on the `classify_3` fixture:
    """),
    code("""
    classifier = ImageGPTForImageClassification.from_pretrained(f"{GOLDEN}/classify_3")
    golden_cls = np.load(f"{GOLDEN}/classify_3/outputs.npz")
    state = classifier(golden_cls["input_ids"], output_hidden_states=True).hidden_states[-1]  # [B, T, C]
    pooled = state.mean(axis=1)  # [B, C]
    cls_logits = pooled @ classifier.params["score.weight"].T  # [B, num_labels]
    compare("classification logits", cls_logits, golden_cls["logits"])
    """),
    md("""
    ## Attention on the image grid

    The fixture's attention is nearly uniform: its weights are random. The trained default model (8 x 8
    digits, 16 greys) has learned where to look. Its input is `SOS + pixels[:-1]`: position `t` predicts
    pixel `t`, seeing SOS and pixels `0 .. t-1`. Below, for one query pixel (the red square), each panel
    shows how much one head of one layer attends to every earlier pixel, drawn where that pixel sits
    (blank: pixels not drawn yet; each panel has its own colour scale, and its title gives the weight on SOS).
    """),
    code("""
    from sklearn.datasets import load_digits
    from minigpt_pixels.processor import ImageGPTImageProcessor

    digits = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)
    processor = ImageGPTImageProcessor.from_pretrained(DEFAULT_MODEL)
    image = np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)  # a 0, as 8-bit grey
    pixels = processor(image)["input_ids"]  # [1, 64]
    inputs = np.concatenate([[[digits.config.sos_token_id]], pixels[:, :-1]], axis=1)  # [1, 64]: SOS + pixels[:-1]
    attentions = digits(inputs, output_attentions=True).attentions  # n_layer x [1, H, 64, 64]

    query = 4 * 8 + 5  # predicting pixel (row 4, column 5)
    L, H = digits.config.n_layer, digits.config.n_head
    fig, axes = plt.subplots(L, H + 1, figsize=(1.8 * (H + 1), 1.8 * L))
    for layer in range(L):
        axes[layer, 0].imshow(processor.decode(pixels)[0]); axes[layer, 0].set_ylabel(f"layer {layer}")
        for head in range(H):
            w = attentions[layer][0, head, query]  # [64] weights over SOS + pixels 0..62
            grid = np.full(64, np.nan)  # pixels not drawn yet stay blank
            grid[:query] = w[1:query + 1]  # position j > 0 holds pixel j - 1
            ax = axes[layer, head + 1]
            ax.imshow(grid.reshape(8, 8), cmap="magma", vmin=0)
            ax.add_patch(plt.Rectangle((query % 8 - 0.5, query // 8 - 0.5), 1, 1, fill=False, color="red", lw=2))
            ax.set_title(f"head {head}, SOS {w[0]:.2f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([]); ax.set_yticks([])
    plt.tight_layout()
    """),
    md("""
    Look for heads that pick out one neighbour (the pixel directly above is 8 positions back, the one to
    the left 1 position back) and heads that spread their weight over the strokes drawn so far. Nobody
    told the model that the sequence is an 8 x 8 grid: it learned where "above" is from the data.

    **Summary.** Embedding -> `n_layer` x (layer norm, attention, residual; layer norm, quick_gelu MLP,
    residual) -> `ln_f` -> a head. Every step above matched transformers to 1e-4. Next:
    `03_sampling.ipynb`, or write these pieces yourself in `exercises/`.
    """),
]

MODEL_SETUP = """
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice when ipywidgets is missing

{imports}

model = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)  # device "cpu": NumPy + Numba kernels
processor = ImageGPTImageProcessor.from_pretrained(DEFAULT_MODEL)  # its 16-grey palette, 8 x 8 images
cfg = model.config
print(f"{cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads, {model.num_parameters:,} parameters; "
      f"{len(processor.clusters)} colours, {processor.size['height']} x {processor.size['width']} pixels, SOS = {cfg.sos_token_id}")

data = load_digits_data()  # scikit-learn's 1797 digits, 8 x 8, as uint8 grey images, with labels
train_idx, held_out = split(len(data.images), 0.1, seed=0)  # the split the model was trained with
ids = processor(data.images)["input_ids"]  # [1797, 64] palette ids, no SOS
{extra}"""



def model_setup(*imports, extra=""):
    """The first code cell of the notebooks on the default model, with their own imports and code."""
    base = ["from minigpt_pixels import DEFAULT_MODEL", "from minigpt_pixels.model import ImageGPTForCausalImageModeling",
            "from minigpt_pixels.processor import ImageGPTImageProcessor",
            "from minigpt_pixels.train import load_digits_data, split"]
    return MODEL_SETUP.replace("{imports}", "\n".join(sorted(base + list(imports)))).replace("{extra}", extra)


SHOW_GRID = """

def show(rows, title=None, scale=2.0):
    \"\"\"A grid of uint8 images: rows is a list of lists of [H, W, 3] arrays.\"\"\"
    grid = image_grid(rows)
    plt.figure(figsize=(scale * grid.shape[1] / 9, scale * grid.shape[0] / 9))
    plt.imshow(grid); plt.axis("off")
    if title:
        plt.title(title)
"""


WALKTHROUGHS["03_sampling.ipynb"] = [
    md("""
    # 3. Sampling: new images, completions, and the KV cache

    The default model shipped in the package is a small iGPT trained on scikit-learn's 8 x 8 handwritten
    digits with a 16-grey palette (`python -m minigpt_pixels.train`; see `05_training.ipynb`). Generation
    is one token at a time: feed the sequence so far, read the logits of the last position, draw a
    colour, append it, repeat. This notebook uses `minigpt_pixels.generation`.
    """),
    code(model_setup("from minigpt_pixels.generation import complete_images, generate, sample_images",
                     "from minigpt_pixels.sample import image_grid", extra=SHOW_GRID)),
    md("""
    ## Unconditional samples

    An unconditional image starts from the start-of-sequence token alone (`SOS = vocab_size - 1`) and
    draws all 64 pixels. The first call also compiles the Numba kernels (a few seconds, once per process).
    """),
    code("""
    start = time.perf_counter()
    samples = sample_images(model, processor, 32, seed=0)  # [32, 8, 8, 3] uint8
    print(f"{len(samples)} images in {time.perf_counter() - start:.2f} s (compilation included)")
    show([list(samples[i:i + 8]) for i in range(0, 32, 8)], "32 samples from the default model")
    """),
    md("""
    ## Completions

    As in the iGPT paper: keep the top half of an image the model never saw in training, and let it draw
    the rest, several times. Each row: the original, the prompt (the hidden part tinted blue), then five
    completions.
    """),
    code("""
    picks = held_out[:6]
    completions = complete_images(model, processor, ids[picks], prompt_rows=4, num_completions=5, seed=0)  # [6, 5, 8, 8, 3]
    originals = processor.decode(ids[picks])  # [6, 8, 8, 3]
    prompts = originals.copy()
    prompts[:, 4:] = (170, 200, 255)  # the rows the model fills in
    show([[o, p, *c] for o, p, c in zip(originals, prompts, completions)], "original | prompt | 5 completions")
    """),
    md("""
    ## The KV cache, measured

    Without a cache, each new token means running the model over the whole sequence again: a 64-token
    image processes 1 + 2 + ... + 64 = 2080 positions. With the cache, keys and values of past positions
    are kept, and each step processes just the new position: 64 in all. `generate` uses the cache; below,
    the same greedy generation written without one, timed on the spot. Greedy decoding is deterministic,
    so both must give the same tokens.
    """),
    code("""
    prompt = np.full((8, 1), cfg.sos_token_id)  # 8 sequences, SOS only
    generate(model, prompt, max_new_tokens=2)  # warm-up: compile both code paths before timing
    model(np.repeat(prompt, 16, axis=1))

    start = time.perf_counter()
    cached = generate(model, prompt, max_new_tokens=64)  # [8, 65], greedy
    t_cache = time.perf_counter() - start

    start = time.perf_counter()
    seq = prompt
    for _ in range(64):  # no cache: the whole sequence, every step
        logits = model(seq).logits[:, -1]  # [8, V]
        seq = np.concatenate([seq, logits.argmax(-1)[:, None]], axis=1)
    t_plain = time.perf_counter() - start

    assert np.array_equal(seq, cached)
    print(f"with the KV cache: {t_cache * 1000:6.1f} ms   without: {t_plain * 1000:6.1f} ms   "
          f"speed-up {t_plain / t_cache:.1f}x (positions processed: 64 vs 2080 per sequence)")
    """),
    md("""
    The speed-up is below the 32x in positions because each step also pays a fixed cost (Python, the
    small matmuls); it grows with the sequence length, quadratically for the attention part. For
    iGPT's 1024-token images it is the difference between minutes and hours.

    ## Temperature and top-k, side by side

    The logits are divided by a **temperature** before the softmax: below 1 sharpens the distribution
    (cleaner, more alike), above 1 flattens it (more varied, noisier). **Top-k** keeps only the k most
    likely colours at each step; k = 1 is greedy, so every image of that row is the same. Same seed in
    every row.
    """),
    code("""
    rows, labels = [], []
    for t in [0.5, 0.8, 1.0, 1.5]:
        rows.append(list(sample_images(model, processor, 8, seed=1, temperature=t)))
        labels.append(f"temperature {t}")
    for k in [1, 2, 4, 16]:
        rows.append(list(sample_images(model, processor, 8, seed=1, top_k=k)))
        labels.append(f"top-k {k}")
    show(rows, scale=2.4)
    for i, label in enumerate(labels):
        plt.text(-2, 4.5 + 9 * i, label, ha="right", va="center")
    """),
    md("""
    **Summary.** Generation is the model run one position at a time, made cheap by the KV cache; the
    sampling rules (temperature, then top-k, then top-p, in transformers' order) are small pure functions
    in `generation.py`. Write top-k yourself in `exercises/03_top_k_sampling.ipynb` and the cache step in
    `exercises/02_causal_attention_and_kv_cache.ipynb`. Next: `04_linear_probe.ipynb`.
    """),
]

WALKTHROUGHS["04_linear_probe.ipynb"] = [
    md("""
    # 4. The linear probe: what do the layers know?

    A generative model is trained only to predict the next pixel, yet to do that well it must learn what
    digits look like. The iGPT paper measures this with a **linear probe**: freeze the model, take the
    hidden states of one layer, average them over the sequence, and fit a logistic regression from those
    features to the labels. The better a *linear* classifier does, the more directly the layer encodes the
    class. Doing it for every layer gives an accuracy-by-layer curve, and the paper's surprise was that it
    peaks **in the middle** of the network: the last layers specialise in predicting the next pixel.

    Here: the default model on scikit-learn's digits, with `minigpt_pixels.probe`. The probe is fitted on
    the images the model was trained on and tested on the 180 images it never saw.
    """),
    code(model_setup("from minigpt_pixels.probe import extract_features, linear_probe")),
    md("""
    ## Features from every layer

    `extract_features(model, ids, layer)` runs the frozen transformer and returns
    `hidden_states[layer].mean(axis=1)`: one vector of width `n_embd` per image. Layer 0 is the
    embeddings, layer `i` the output of block `i`, and the last entry is taken after the final layer norm.
    `add_sos=True` feeds the sequence the way the model was trained: SOS, then the pixels (the last pixel
    is only ever a target, so it is dropped). Every layer comes out of the same forward pass:
    """),
    code("""
    layer_ids = list(range(cfg.n_layer + 1))
    start = time.perf_counter()
    features = extract_features(model, ids, layer_ids, add_sos=True)  # [n_layer + 1, 1797, n_embd]
    print(features.shape, f"in {time.perf_counter() - start:.1f} s")
    labels = data.labels
    """),
    md("""
    ## One logistic regression per layer

    `linear_probe` standardises the features and fits scikit-learn's `LogisticRegression` on the
    training images, then scores the held-out ones. As a baseline, the same probe on the raw pixels.
    """),
    code("""
    raw = np.stack(data.images).reshape(len(data.images), -1) / 255.0  # [1797, 64] grey levels
    baseline = linear_probe(raw[train_idx], labels[train_idx], raw[held_out], labels[held_out])

    names = ["embeddings"] + [f"block {i}" for i in range(cfg.n_layer - 1)] + [f"block {cfg.n_layer - 1} + ln_f"]
    accuracy = []
    for layer in layer_ids:
        result = linear_probe(features[layer][train_idx], labels[train_idx], features[layer][held_out], labels[held_out])
        accuracy.append(result.accuracy)
        print(f"layer {layer} ({names[layer]:>16s}): held-out accuracy {result.accuracy:.3f} "
              f"({round((1 - result.accuracy) * result.n_test)} of {result.n_test} wrong), training {result.train_accuracy:.3f}")
    print(f"raw pixels              : held-out accuracy {baseline.accuracy:.3f}")
    best = int(np.argmax(accuracy))
    print(f"best layer: {best} of {cfg.n_layer}")
    """),
    code("""
    plt.figure(figsize=(6, 3.5))
    plt.plot(layer_ids, accuracy, "o-", label="linear probe on mean-pooled features")
    plt.axhline(baseline.accuracy, color="gray", ls="--", label="linear probe on raw pixels")
    for x, a in zip(layer_ids, accuracy):
        plt.annotate(f"{a:.3f}", (x, a), textcoords="offset points", xytext=(0, -9), ha="center", va="top", fontsize=8)
    plt.xticks(layer_ids, names, rotation=20)
    plt.ylabel("held-out accuracy"); plt.ylim(min(accuracy + [baseline.accuracy]) - 0.08, 1.0)
    plt.title("digits: accuracy by layer of the default model"); plt.legend(loc="lower right"); plt.grid(alpha=0.3)
    """),
    md("""
    With 180 test images each one is worth 0.56 points of accuracy (the standard error near 95% is about
    1.6 points), so a steadier estimate helps: the same probe on five random stratified splits of all
    1797 digits (80% to fit, 20% to test; `linear_probe`'s `seed` picks the split). Here the model has
    seen most test images during pre-training, but never their labels.
    """),
    code("""
    def repeated(x):
        scores = [linear_probe(x, labels, seed=seed).accuracy for seed in range(5)]
        return np.mean(scores), np.std(scores)

    for layer in layer_ids:
        mean, std = repeated(features[layer])
        print(f"layer {layer} ({names[layer]:>16s}): {mean:.3f} +- {std:.3f}")
    mean, std = repeated(raw)
    print(f"raw pixels              : {mean:.3f} +- {std:.3f}")
    """),
    md("""
    What a linear classifier sees: the best layer's features of the held-out digits, projected onto their
    two main directions (PCA), one colour per digit. Classes that form separate clouds are easy for a
    linear probe; overlapping ones are where it errs.
    """),
    code("""
    from sklearn.decomposition import PCA

    points = PCA(n_components=2).fit(features[best][train_idx]).transform(features[best][held_out])  # [180, 2]
    plt.figure(figsize=(5, 4))
    scatter = plt.scatter(points[:, 0], points[:, 1], c=labels[held_out], cmap="tab10", s=14)
    plt.legend(*scatter.legend_elements(), title="digit", fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    plt.title(f"layer {best} features of the held-out digits, PCA")
    plt.xticks([]); plt.yticks([])
    """),
    md("""
    Reading the curve. The pooled embeddings are little more than a histogram of the greys in the image
    (averaging over positions throws away *where* each grey is), so they read the digit poorly. One block
    of attention is enough to mix position into the features, and the probe jumps. Whether the later
    layers add to that or give some of it back is the paper's question: in iGPT the best features sit in
    the middle, and the last layers, busy predicting the next pixel, are worse. A model this small, on
    8 x 8 digits that raw pixels already classify well, shows a small version of the effect at best; the
    paper's gains over pixel baselines need ImageNet-sized models and data. Compare the held-out curve
    with the repeated splits before reading a peak into it: differences within a standard deviation or
    two are noise.

    **Summary.** `extract_features` + `linear_probe` are two lines per layer; `probe_by_layer` does the
    loop. The same numbers are in the README, made by `scripts/make_readme_images.py`.
    """),
]

WALKTHROUGHS["07_likelihood.ipynb"] = [
    md("""
    # 7. Likelihood: nats, bits, and surprise

    A generative model assigns every image a probability: the product, over the pixels, of the
    probability it gave each pixel's actual colour given the pixels before it. Its negative log, averaged
    per token, is the number the iGPT paper reports. This notebook computes it for the default model on
    digits it never saw, explains why it is not the usual *bits per dimension*, and draws where in an
    image the model was surprised.
    """),
    code(model_setup("from minigpt_pixels.layers import log_softmax", "from minigpt_pixels.probe import with_sos")),
    md("""
    ## Nats and bits per token

    The model reads `SOS + pixels[:-1]` and its logits at position `t` are a distribution over the 16
    colours of pixel `t`. The log-probability of the true colour, negated, is the pixel's *surprise* in
    nats (natural log); divided by ln 2 it is in bits.
    """),
    code("""
    x = with_sos(ids[held_out], cfg)  # [180, 64]: SOS + pixels[:-1]
    targets = ids[held_out]  # [180, 64]: every pixel
    logits = model(x).logits  # [180, 64, 16]
    logp = log_softmax(logits)  # log-probabilities over the 16 colours
    nats = -np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [180, 64] surprise per pixel

    per_token = nats.mean()
    print(f"held-out: {per_token:.4f} nats per token = {per_token / np.log(2):.4f} bits per token")
    frequencies = np.bincount(ids[train_idx].ravel(), minlength=16) / ids[train_idx].size
    print(f"uniform over 16 colours: {np.log(16):.4f} nats = 4 bits per token")
    print(f"colour frequencies alone (no context): {-(frequencies * np.log(frequencies + 1e-12)).sum():.4f} nats per token")
    """),
    md("""
    The model needs far fewer bits than either baseline: most pixels of a digit are predictable from the
    ones above and to the left.

    ## Why this is not "bits per dimension"

    Likelihood models of images (PixelCNN, Image Transformer, ...) usually report **bits per dimension**:
    $-\\log_2 p(x)$ divided by the number of sub-pixels, $H \\times W \\times 3$, for 8-bit RGB. iGPT's
    number is not comparable:

    * **The tokens are not the pixels.** iGPT first quantizes each pixel to one of 512 palette colours
      (here 16 greys). The likelihood is of the *quantized* image; the information k-means threw away is
      never paid for, so the number is lower than any model of the real pixels could reach.
    * **One token per pixel, not three.** A token carries a whole colour. Dividing by 3 to get "per
      dimension" does not make it a per-sub-pixel number: there is no distribution over sub-pixels.
    * **Nats per token over a palette.** The paper reports nats per token (about 2.05 to 2.09 for iGPT-S/M/L
      on ImageNet 32 x 32, 512 colours), which only compares with models using the same palette.

    ## Surprise heatmaps

    Where is the model surprised? Each pixel's surprise in bits, drawn on the image:
    """),
    code("""
    bits = nats / np.log(2)  # [180, 64]
    order = np.argsort(bits.sum(axis=1))  # least to most surprising image
    picks = list(order[:3]) + list(order[-3:])
    images = processor.decode(targets[picks])  # [6, 8, 8, 3]

    fig, axes = plt.subplots(2, 6, figsize=(13, 4.6))
    for col, (i, image) in enumerate(zip(picks, images)):
        axes[0, col].imshow(image)
        axes[0, col].set_title(f"{bits[i].sum():.0f} bits" + (" (easy)" if col < 3 else " (hard)"))
        im = axes[1, col].imshow(bits[i].reshape(8, 8), cmap="inferno", vmin=0, vmax=bits.max())
    for ax in axes.flat:
        ax.set_xticks([]); ax.set_yticks([])
    fig.colorbar(im, ax=axes[1].tolist(), label="bits")
    axes[1, 0].set_ylabel("surprise")
    """),
    md("""
    The surprise sits on the strokes, where one starts, stops or turns: once a stroke is under way it is
    easy to continue, and the blank margins cost almost nothing. On average over the held-out digits the
    top of the digit costs most: until the first strokes are drawn, the model cannot know which digit is
    coming.
    """),
    code("""
    plt.figure(figsize=(3.5, 3))
    plt.imshow(bits.mean(axis=0).reshape(8, 8), cmap="inferno")
    plt.colorbar(label="mean bits"); plt.xticks([]); plt.yticks([])
    plt.title("average surprise per position")
    print(f"the first pixel costs {bits[:, 0].mean():.2f} bits on average, the whole image {bits.sum(1).mean():.1f} bits")
    """),
    md("""
    **Summary.** Likelihood = the sum of per-token log-losses, the quantity training minimises
    (`train.evaluate` reports it on the held-out split). Report it in nats (or bits) per palette token and
    say which palette; do not call it bits per dimension.
    """),
]

WALKTHROUGHS["05_training.ipynb"] = [
    md("""
    # 5. Training from scratch, in NumPy

    Every layer in `minigpt_pixels.layers` has a `*_forward` / `*_backward` pair; `backprop.py` runs the
    forward keeping each layer's cache, then the same list of layers in reverse. This notebook checks
    those gradients two ways, then trains a tiny iGPT on the digits for a few hundred steps with AdamW and
    watches the loss fall and the samples improve. (The default model was trained the same way, longer,
    with `python -m minigpt_pixels.train`.)
    """),
    code("""
    import time
    import warnings

    import matplotlib.pyplot as plt
    import numpy as np

    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notice when ipywidgets is missing

    from minigpt_pixels import optim, train
    from minigpt_pixels.config import ImageGPTConfig
    from minigpt_pixels.generation import sample_images
    from minigpt_pixels.model import ImageGPTForCausalImageModeling
    from minigpt_pixels.sample import image_grid
    """),
    md("""
    ## 1. Gradients against transformers

    `model.value_and_grad(ids, labels)` returns the loss and the gradient of every weight, keyed by the
    same names as the weights. The golden fixture holds the gradients torch's autograd computed for the
    same model and inputs:
    """),
    code("""
    GOLDEN = "../tests/golden/models/causal_small"
    model = ImageGPTForCausalImageModeling.from_pretrained(GOLDEN)
    golden = np.load(f"{GOLDEN}/outputs.npz")
    loss, grads = model.value_and_grad(golden["input_ids"], golden["labels"])
    print(f"loss {float(loss):.6f}, transformers {float(golden['loss']):.6f}")
    worst = 0.0
    for name, g in grads.items():
        diff = float(np.max(np.abs(g - golden[f"grad.{name}"])))
        worst = max(worst, diff)
        if ".h.1." not in name:
            print(f"{name:40s} {str(g.shape):10s} max |ours - torch| = {diff:.1e}")
    print(f"worst over all {len(grads)} tensors: {worst:.1e}")
    assert worst < 1e-4
    """),
    md("""
    ## 2. Gradients against finite differences

    Independent of any library: nudge one weight by $\\pm h$, re-run the forward pass, and compare
    $(L(w + h) - L(w - h)) / 2h$ with the analytic gradient, for the largest entry of a few tensors. In
    float32 the loss itself is only good to about 1e-7, so $h$ cannot be tiny, and agreement to about a
    part in a thousand is what to expect (less where the gradient is small and the rounding dominates):
    """),
    code("""
    params = {k: np.array(v) for k, v in model.params.items()}  # writable copies (loaded weights are read-only)
    model.params = params

    def loss_at():
        return float(model(golden["input_ids"], labels=golden["labels"]).loss)

    h = 1e-2
    for name in ["transformer.wte.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight",
                 "transformer.ln_f.weight", "lm_head.weight"]:
        i = np.unravel_index(np.argmax(np.abs(grads[name])), grads[name].shape)  # the largest entry: most signal
        w = params[name]
        old = w[i]
        w[i] = old + h
        up = loss_at()
        w[i] = old - h
        down = loss_at()
        w[i] = old
        numeric = (up - down) / (2 * h)
        where = str(tuple(int(j) for j in i))
        print(f"{name:36s}{where:10s} analytic {grads[name][i]: .6f}  numeric {numeric: .6f}  "
              f"relative error {abs(numeric - grads[name][i]) / abs(grads[name][i]):.1e}")
    """),
    md("""
    ## 3. Data: the digits as palette tokens

    The trainer's own helpers: scikit-learn's digits, a fixed held-out split, a 16-colour palette fitted
    by k-means to the training images, and the token ids. The model reads `SOS + pixels[:-1]` and predicts
    every pixel (OpenAI's form of the shift).
    """),
    code("""
    data = train.load_digits_data()
    train_idx, held_out = train.split(len(data.images), 0.1, seed=0)
    processor = train.fit_processor([data.images[i] for i in train_idx], data.size, 16, seed=0)
    ids = train.encode(processor, data.images)  # [1797, 64]
    sos = np.full((len(ids), 1), 16)  # SOS = vocab_size - 1 = 16 colours
    inputs, targets = np.concatenate([sos, ids[:, :-1]], axis=1), ids
    print(inputs.shape, "e.g.", inputs[0, :10], "->", targets[0, :9])
    """),
    md("""
    ## 4. A tiny model, trained

    Two blocks of width 32 (about 30k weights), AdamW with a warm-up and a cosine decay, gradient
    clipping at 1, batches of 32 images. `train.train_step` is forward, backward, clip, update. We keep
    the loss of every step and take 8 samples (same seed) at a few points.
    """),
    code("""
    config = ImageGPTConfig(vocab_size=17, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    tiny = ImageGPTForCausalImageModeling(config, seed=0)
    print(f"{tiny.num_parameters:,} parameters")
    optimizer = optim.AdamW(tiny.params, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)

    STEPS, LR, WARMUP = 300, 3e-3, 20
    x_train, y_train = inputs[train_idx], targets[train_idx]
    losses, held_out_loss, snapshots = [], {}, {}
    start = time.perf_counter()
    with train.set_threads(1):  # matrices this small run fastest on one BLAS thread
        for step in range(STEPS + 1):
            if step in (0, 25, 100, STEPS):
                snapshots[step] = sample_images(tiny, processor, 8, seed=0)
                held_out_loss[step] = train.evaluate(tiny, inputs[held_out], targets[held_out])["nats"]
            if step == STEPS:
                break
            batch = np.random.default_rng([0, step]).choice(len(x_train), 32, replace=False)  # 32 images
            lr = optim.lr_schedule(step, LR, STEPS, WARMUP)
            loss, norm = train.train_step(tiny, optimizer, x_train[batch], y_train[batch], lr, 1.0, None)
            losses.append(loss)
    print(f"{STEPS} steps in {time.perf_counter() - start:.1f} s")
    for step, nats in held_out_loss.items():
        print(f"step {step:4d}: held-out {nats:.3f} nats per token")
    """),
    code("""
    plt.figure(figsize=(6, 3.2))
    plt.plot(losses, lw=0.8, label="training batch")
    plt.plot(list(held_out_loss), list(held_out_loss.values()), "o-", label="held-out")
    plt.axhline(np.log(16), color="gray", ls=":", label="uniform guess, ln 16")
    plt.xlabel("step"); plt.ylabel("nats per token"); plt.legend(); plt.grid(alpha=0.3)
    plt.title("the loss curve")
    """),
    code("""
    rows = [list(images) for images in snapshots.values()]
    grid = image_grid(rows)
    plt.figure(figsize=(7, 3.8))
    plt.imshow(grid); plt.xticks([])
    plt.yticks([5 + 9 * i for i in range(len(rows))], [f"step {s}" for s in snapshots])
    plt.title("samples improving over training (same seed)")
    """),
    md("""
    At step 0 the model draws every colour at random; after a few dozen steps it has learned the
    background, and by a few hundred the first strokes appear. The default model shipped in the package
    is the same recipe, bigger and trained for longer (its command is in `minigpt_pixels/train.py`), on
    the same held-out split:
    """),
    code("""
    from minigpt_pixels import DEFAULT_MODEL

    default = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)
    c = default.config
    nats = train.evaluate(default, inputs[held_out], targets[held_out])["nats"]
    print(f"default model: {c.n_layer} blocks of width {c.n_embd}, {default.num_parameters:,} parameters, "
          f"held-out {nats:.3f} nats per token")
    print(f"this notebook's: {config.n_layer} blocks of width {config.n_embd}, {tiny.num_parameters:,} parameters, "
          f"held-out {held_out_loss[STEPS]:.3f} nats per token after {STEPS} steps")
    """),
    md("""
    To train one yourself (a progress bar, checkpoints, and the held-out loss as it goes):

        python -m minigpt_pixels.train --data digits --out runs/digits --steps 3000

    **Summary.** Gradients agree with torch and with finite differences; AdamW on them lowers the loss
    from ln 16 = 2.77 nats per token towards the default model's. Write a backward pass yourself in
    `exercises/05_layer_norm_backward.ipynb`.
    """),
]

WALKTHROUGHS["06_cuda_kernels.ipynb"] = [
    md("""
    # 6. The Numba CUDA kernels: a tiled matmul and fused attention

    `model.to("cuda")` runs the forward pass with the kernels in `minigpt_pixels/kernels/cuda.py`, written
    in Python with Numba's `@cuda.jit`. This notebook explains the two that matter most, the tiled
    matrix multiply and the fused causal attention, and checks both against the NumPy reference in
    `layers.py`.

    **No GPU? No problem.** Numba ships a CUDA *simulator*: with the environment variable
    `NUMBA_ENABLE_CUDASIM=1` it runs every CUDA thread as a Python thread on the CPU, with the same
    indexing, shared memory, `syncthreads` barriers and bounds checks (an out-of-range index raises,
    where a real GPU would silently read garbage). It is thousands of times slower, so we use small
    tiles and small matrices, but the kernels are the very same code. The variable is read when numba is
    first imported, so it must be set **before** importing numba or `minigpt_pixels` (which imports it).
    """),
    code("""
    import os
    import subprocess
    import sys

    # Ask a fresh Python, with the simulator off, whether numba sees a real GPU (this process must not
    # import numba before deciding).
    probe = subprocess.run([sys.executable, "-c", "from numba import cuda; print(cuda.is_available())"],
                           capture_output=True, text=True, env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"})
    HAS_GPU = probe.stdout.strip() == "True"
    # Before numba is imported (below, via minigpt_pixels); set either way, so that a value inherited
    # from the environment (the test suite simulates everything) cannot override what we found.
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0" if HAS_GPU else "1"
    print("running on a real GPU" if HAS_GPU else "no GPU found: using Numba's CUDA simulator")
    """),
    code("""
    import time

    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    from minigpt_pixels import layers
    from minigpt_pixels.kernels import cuda as K

    rng = np.random.default_rng(0)
    """),
    md("""
    ## The tiled matmul

    A GPU runs thousands of threads in **blocks**; the threads of a block share a small, fast
    **shared memory**. The naive kernel gives each thread one output element and has it read a whole row
    of `A` and column of `B` from slow global memory: `2K` loads for `K` multiply-adds. The tiled kernel
    gives each block a `bm x bn` tile of the output. It walks along `K` in steps of `bk`: the block's
    threads copy a `bm x bk` slice of `A` and a `bk x bn` slice of `B` into shared memory (each element
    read once), `syncthreads()`, then every thread multiplies from shared memory into registers,
    `syncthreads()` again before the next slices overwrite them. Each thread also owns a small `tm x tn`
    sub-tile, so each value loaded from shared memory is reused `tm` or `tn` times.
    """),
    code("""
    M, K_, N, bm, bn, bk = 40, 24, 36, 16, 16, 4  # the sizes used below
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (name, h, w) in zip(axes, [("A  [M, K]", M, K_), ("B  [K, N]", K_, N), ("C = A @ B  [M, N]", M, N)]):
        ax.add_patch(Rectangle((0, 0), w, h, fill=False))
        ax.set_xlim(-1, w + 1); ax.set_ylim(h + 1, -1); ax.set_aspect("equal"); ax.set_title(name); ax.axis("off")
    by, bx = 1, 1  # the block computing tile (1, 1) of C
    for k0, shade in zip(range(0, K_, bk), np.linspace(0.25, 0.9, -(-K_ // bk))):
        axes[0].add_patch(Rectangle((k0, by * bm), bk, bm, color=plt.cm.Blues(shade)))  # A's slice at step k0
        axes[1].add_patch(Rectangle((bx * bn, k0), bn, bk, color=plt.cm.Oranges(shade)))  # B's slice
    for r in range(0, M, bm):
        for c in range(0, N, bn):
            axes[2].add_patch(Rectangle((c, r), bn, bm, fill=False, ls=":", color="gray"))
    axes[2].add_patch(Rectangle((bx * bn, by * bm), bn, bm, color="green", alpha=0.6))
    fig.suptitle(f"one block: its {bm} x {bn} tile of C (green) from {-(-K_ // bk)} slices of A and B, darker = later step k0")
    plt.tight_layout()
    """),
    md("""
    The launch: a grid of `ceil(N / bn) x ceil(M / bm)` blocks, `(bm / tm) * (bn / tn)` threads each. The
    edges are the classic bug: `M`, `N` and `K` need not be multiples of the tile, so every load is
    guarded (out-of-range elements are loaded as 0) and every store checks its row and column. The sizes
    here are deliberately not multiples. Small tiles for the simulator; the defaults on a GPU are
    `MatmulTiles()` (128 x 128 tiles, 8 x 8 per thread).
    """),
    code("""
    tiles = K.MatmulTiles(bm=16, bn=16, bk=4, tm=2, tn=2)
    a = rng.normal(size=(M, K_)).astype(np.float32)
    b = rng.normal(size=(K_, N)).astype(np.float32)
    grid = (-(-N // tiles.bn), -(-M // tiles.bm))
    print(f"grid {grid} blocks x {tiles.threads} threads, shared memory "
          f"{4 * tiles.bk * (tiles.bm + 4 + tiles.bn)} bytes per block")

    start = time.perf_counter()
    c = K.matmul(a, b, tiles=tiles)  # the kernel (host arrays in, host array out)
    print(f"kernel: {c.shape} {c.dtype} in {time.perf_counter() - start:.2f} s")
    print(f"max |kernel - layers.linear| = {np.abs(c - layers.linear(a, b)).max():.1e}")
    assert np.allclose(c, a @ b, atol=1e-4)
    """),
    md("""
    How much global-memory traffic the tiles save, for iGPT-S's attention projection on one image
    (`M = 1024` positions, `K = 512`, `N = 3 x 512`) with the default 128 x 128 tiles:
    """),
    code("""
    M2, K2, N2, t = 1024, 512, 1536, K.MatmulTiles()
    naive = 2 * M2 * N2 * K2  # every output reads a row of A and a column of B
    tiled = M2 * K2 * (N2 // t.bn) + K2 * N2 * (M2 // t.bm)  # A read once per column of tiles, B once per row
    print(f"naive: {naive * 4 / 1e9:.1f} GB of loads   tiled: {tiled * 4 / 1e6:.0f} MB   ({naive / tiled:.0f}x less)")
    """),
    md("""
    ## Fused causal attention

    The reference computes the full score matrix `[B, H, T, S]`, masks, softmaxes, and multiplies by `v`:
    at iGPT-S size that is 8 heads x 1024 x 1024 floats = 32 MB per image, written and read back. The
    fused kernel never forms it. One thread owns one query row; the block streams the keys and values
    through shared memory `bkv` at a time, and keeps for its row a running maximum `m`, a running sum
    `l` of `exp(score - m)`, and a running weighted sum of values. When a new score beats `m`, what was
    accumulated so far is rescaled by `exp(m_old - m_new)`. This **online softmax** (the idea behind
    FlashAttention) gives the same result as the softmax over the whole row, shown here on one row:
    """),
    code("""
    scores = rng.normal(size=10) * 3  # one row of scores
    m, l = -np.inf, 0.0
    for chunk in np.split(scores, [3, 7]):  # three tiles of keys
        m_new = max(m, chunk.max())
        l = l * np.exp(m - m_new) + np.exp(chunk - m_new).sum()  # rescale what was summed, add the new tile
        m = m_new
    print(f"online:  max {m:.4f}, sum {l:.6f}")
    print(f"at once: max {scores.max():.4f}, sum {np.exp(scores - scores.max()).sum():.6f}")
    """),
    md("""
    The kernel against `layers.attention`, first on a full sequence, then with a KV cache (the queries are
    the last 5 of 23 positions, so query `t` sees keys `0 .. 18 + t`), then the one-query decode kernel
    used when sampling:
    """),
    code("""
    att_tiles = K.AttentionTiles(bq=8, bkv=4)
    q, k, v = rng.normal(size=(3, 1, 2, 20, 8)).astype(np.float32)  # [B, H, T, D]
    scale = layers.attention_scale(8)
    out = K.causal_attention(q, k, v, scale, tiles=att_tiles)
    print(f"full sequence:  max |kernel - reference| = {np.abs(out - layers.attention(q, k, v, scale)[0]).max():.1e}")

    k2, v2 = rng.normal(size=(2, 1, 2, 23, 8)).astype(np.float32)  # 23 keys, 5 new queries
    q2 = q[:, :, :5]
    out = K.causal_attention(q2, k2, v2, scale, tiles=att_tiles)
    print(f"with a cache:   max |kernel - reference| = {np.abs(out - layers.attention(q2, k2, v2, scale)[0]).max():.1e}")

    out = K.decode_attention(q[:, :, :1], k2, v2, length=13, scale=scale, tiles=K.DecodeTiles(threads=16, chunk=8))
    reference = layers.attention(q[:, :, :1], k2[:, :, :13], v2[:, :, :13], scale)[0]
    print(f"decode step:    max |kernel - reference| = {np.abs(out - reference).max():.1e}")
    """),
    md("""
    ## On a real GPU: speed

    Under the simulator timings mean nothing (and a whole model takes minutes), so this part runs only
    on a GPU: the default-size kernels against NumPy on the CPU, and the default model on `cuda` against
    `cpu`.
    """),
    code("""
    if HAS_GPU:
        from minigpt_pixels import DEFAULT_MODEL
        from minigpt_pixels.model import ImageGPTForCausalImageModeling

        a, b = rng.normal(size=(2, 2048, 2048)).astype(np.float32)
        da, db = K.to_device(a), K.to_device(b)
        K.matmul(da, db)  # compile
        start = time.perf_counter(); K.matmul(da, db).copy_to_host(); gpu = time.perf_counter() - start
        start = time.perf_counter(); a @ b; cpu = time.perf_counter() - start
        print(f"2048^3 matmul: GPU kernel {gpu * 1000:.1f} ms, NumPy on the CPU {cpu * 1000:.1f} ms")

        model = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)
        ids = np.random.default_rng(0).integers(0, 16, size=(256, 64))
        reference = model(ids).logits
        model.to("cuda"); model(ids)  # compile
        start = time.perf_counter(); logits = model(ids).logits; gpu = time.perf_counter() - start
        print(f"default model, 256 images: cuda {gpu * 1000:.1f} ms, max |cuda - cpu| = {np.abs(logits - reference).max():.1e}")
    else:
        print("no GPU: timings skipped (the simulator is for correctness, not speed)")
    """),
    md("""
    **Summary.** Both kernels mirror a `layers.py` function (same arguments, same result, float32), carry
    their launch configuration and memory traffic in a header comment, guard every bound, and are checked
    against the reference, here and in `tests/test_kernels_cuda.py` under the simulator. Next:
    `07_likelihood.ipynb`.
    """),
]


if __name__ == "__main__":
    sys.exit(main())
