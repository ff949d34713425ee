"""The classroom grader: the package's own functions pass, a student's correct version passes, every
classic mistake fails with its hint, and nothing a student hands in makes `check` raise."""

import numpy as np
import pytest

from minigpt_pixels import exercises
from minigpt_pixels.exercises import EXERCISES, CheckResult, check

F32 = np.float32
ALL_MISTAKES = [(name, m) for name, ex in EXERCISES.items() for m in ex.mistakes]


def test_the_issue_s_exercises_are_all_there():
    assert {"layer_norm", "quick_gelu", "causal_attention", "kv_cache_step", "top_k_filter", "top_k_sample",
            "kmeans_step", "layer_norm_backward"} <= set(EXERCISES)


@pytest.mark.parametrize("name", list(EXERCISES))
def test_reference_passes(name):
    result = check(name, EXERCISES[name].reference)
    assert result.passed, result.message
    assert result.status == "passed" and bool(result)
    assert "passed all" in result.message


@pytest.mark.parametrize("name,mistake", ALL_MISTAKES, ids=[f"{n}-{m.name}" for n, m in ALL_MISTAKES])
def test_each_classic_mistake_fails_with_its_hint(name, mistake):
    result = check(name, mistake.fn)
    assert result.status == "failed", f"{name}/{mistake.name} was not caught: {result.message}"
    assert (mistake.expect or mistake.hint) in result.message, result.message
    assert "Likely mistake" in result.message


def test_the_named_classic_mistakes_of_the_issue_are_covered():
    names = {(n, m.name) for n, m in ALL_MISTAKES}
    for pair in [("layer_norm", "mean_centred"), ("layer_norm", "weight_added"), ("quick_gelu", "exact_gelu"),
                 ("quick_gelu", "tanh_gelu"), ("causal_attention", "no_mask"),
                 ("causal_attention", "mask_excludes_diagonal"), ("causal_attention", "no_scale"),
                 ("causal_attention", "softmax_wrong_axis"), ("kv_cache_step", "not_appended"),
                 ("kv_cache_step", "wrong_position"), ("top_k_filter", "keeps_k_plus_1"),
                 ("top_k_sample", "no_renormalise"), ("kmeans_step", "l1_distance"), ("kmeans_step", "empty_nan"),
                 ("layer_norm_backward", "missing_projection")]:
        assert pair in names


def test_mistake_messages_name_the_case_and_show_values():
    result = check("layer_norm", lambda x, w, eps=1e-5: (x - x.mean(-1, keepdims=True))
                   / np.sqrt(x.var(-1, keepdims=True) + eps) * w)
    assert result.mistake == "mean_centred" and result.case
    assert "subtracted the mean" in result.message
    assert "first differing values" in result.message and "expected vs yours" in result.message


# ---- students' own correct versions, written the way students write them --------------------------
def student_layer_norm(x, weight, eps=1e-5):
    rms = np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + eps)
    return weight * (x / rms)


def student_quick_gelu(x):
    return x * (1 / (1 + np.exp(-1.702 * x)))


def student_attention(q, k, v, scale):
    T, S = q.shape[-2], k.shape[-2]
    scores = q @ k.swapaxes(-1, -2) * scale
    scores = np.where(np.triu(np.ones((T, S), bool), 1), -np.inf, scores)
    scores = scores - scores.max(-1, keepdims=True)
    w = np.exp(scores)
    w /= w.sum(-1, keepdims=True)
    return w @ v, w


def student_kv_step(q, k, v, past_k, past_v, scale):
    keys, values = np.concatenate([past_k, k], axis=2), np.concatenate([past_v, v], axis=2)
    T, S = q.shape[2], keys.shape[2]
    s = q @ keys.transpose(0, 1, 3, 2) * scale
    s = np.where(np.arange(S)[None, :] <= np.arange(S - T, S)[:, None], s, -1e9)
    w = np.exp(s - s.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)) @ values, keys, values


def student_top_k_filter(logits, k):
    kth = np.partition(logits, -k, axis=-1)[:, -k][:, None]
    out = logits.copy()
    out[out < kth] = -np.inf
    return out


def student_top_k_sample(logits, k, rng):
    ids = []
    for row in logits:
        top = np.argsort(row)[::-1][:k]
        p = np.exp(row[top] - row[top].max())
        ids.append(top[rng.choice(k, p=p / p.sum())])
    return np.array(ids)


def student_kmeans_step(pixels, centres):
    d = ((pixels[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    ids = d.argmin(1)
    new = centres.copy()
    for j in range(len(centres)):
        if np.any(ids == j):
            new[j] = pixels[ids == j].mean(0)
        else:
            new[j] = pixels[d[np.arange(len(pixels)), ids].argmax()]
    return new


def student_layer_norm_backward(dout, cache):
    n, weight, rms = cache
    g = dout * weight
    dx = g / rms - n * (g * n).mean(-1, keepdims=True) / rms
    return dx, (dout * n).reshape(-1, n.shape[-1]).sum(0)


def student_bits_per_token(logits, targets):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, targets[:, :, None], axis=2)[:, :, 0]
    return (-picked.mean(axis=1) / np.log(2)).astype(np.float32)


STUDENTS = {"layer_norm": student_layer_norm, "quick_gelu": student_quick_gelu,
            "causal_attention": student_attention, "kv_cache_step": student_kv_step,
            "top_k_filter": student_top_k_filter, "top_k_sample": student_top_k_sample,
            "kmeans_step": student_kmeans_step, "layer_norm_backward": student_layer_norm_backward,
            "bits_per_token": student_bits_per_token}


@pytest.mark.parametrize("name", list(EXERCISES))
def test_a_student_s_correct_version_passes(name):
    result = check(name, STUDENTS[name])
    assert result.passed, result.message


def test_attention_may_return_the_output_alone():
    assert check("causal_attention", lambda q, k, v, s: student_attention(q, k, v, s)[0]).passed


def test_the_documented_layer_norm_cache_is_the_package_s():
    """The exercise (and its notebook) tell students cache = (n, weight, rms) with n = x / rms."""
    from minigpt_pixels import layers
    x = np.random.default_rng(0).normal(size=(2, 5)).astype(F32)
    w = np.full(5, 2.0, F32)
    n, weight, rms = layers.layer_norm_forward(x, w)[1]
    assert rms.shape == (2, 1) and weight is w
    np.testing.assert_allclose(n, x / rms, rtol=1e-6)
    assert "(n, weight, rms)" in EXERCISES["layer_norm_backward"].returns


# ---- bad functions: failed results with a message, never an exception --------------------------
def raises(x, weight, eps=1e-5):
    return x @ np.ones((3, 3))  # shapes do not match


def test_function_that_raises():
    result = check("layer_norm", raises)
    assert result.status == "failed"
    assert "raised ValueError" in result.message
    assert "x @ np.ones((3, 3))" in result.message  # the student's line


def test_unfilled_skeleton_is_not_done():
    def layer_norm(x, weight, eps=1e-5):
        # YOUR CODE HERE
        raise NotImplementedError
    result = check("layer_norm", layer_norm)
    assert result.status == "not done" and not result.passed
    assert "not done yet" in result.message


def test_returns_none():
    result = check("quick_gelu", lambda x: None)
    assert result.status == "failed" and "returned None" in result.message and "return" in result.message


def test_returns_a_list():
    result = check("quick_gelu", lambda x: (x / (1 + np.exp(-1.702 * x))).tolist())
    assert result.status == "failed" and "list" in result.message and "NumPy array" in result.message


def test_wrong_shape():
    result = check("layer_norm", lambda x, w, eps=1e-5: np.mean(x, axis=-1))
    assert result.status == "failed" and "expected shape" in result.message and "got shape" in result.message


def test_wrong_dtype_with_right_values():
    result = check("quick_gelu", lambda x: (x / (1 + np.exp(-1.702 * x))).astype(np.float64))
    assert result.status == "failed"
    assert "dtype float32, got float64" in result.message and "values are right" in result.message


def test_nan_output():
    result = check("quick_gelu", lambda x: np.full_like(x, np.nan))
    assert result.status == "failed" and "NaN" in result.message


def test_function_that_takes_forever():
    def forever(x):
        while True:
            pass
    result = check("quick_gelu", forever, timeout=0.3)
    assert result.status == "failed" and "longer than" in result.message


def test_swallowing_exceptions_does_not_defeat_the_time_limit():
    def stubborn(x):
        while True:
            try:
                while True:
                    pass
            except Exception:
                pass
    assert "longer than" in check("quick_gelu", stubborn, timeout=0.3).message


def test_wrong_number_of_arguments():
    result = check("layer_norm", lambda x: x)
    assert result.status == "failed" and "cannot be called as layer_norm(x, weight, eps=1e-5)" in result.message


def test_changes_its_input_in_place():
    def in_place(x, weight, eps=1e-5):
        x /= np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
        x *= weight
        return x
    result = check("layer_norm", in_place)
    assert result.status == "failed" and "in place" in result.message


def test_not_a_function_and_unknown_exercise():
    assert "expected a function" in check("layer_norm", 3).message
    result = check("layer_nrom", student_layer_norm)
    assert result.status == "failed" and "no exercise named" in result.message and "layer_norm" in result.message


def test_wrong_tuple_for_several_outputs():
    result = check("kv_cache_step", lambda q, k, v, pk, pv, s: q)
    assert result.status == "failed" and "tuple of 3 arrays" in result.message


def test_sampling_must_draw_from_the_rng_it_is_given():
    def own_rng(logits, k, rng):
        return student_top_k_sample(logits, k, np.random.default_rng())
    result = check("top_k_sample", own_rng)
    assert result.status == "failed" and "same seed" in result.message


def test_sampling_that_ignores_rng_or_draws_nothing_at_random_fails():
    """The issue's cheats: a generator of its own with a fixed seed, and no random numbers at all (each
    row's tokens laid out in exact proportion): both pass every statistical test, so rng is tested exactly."""
    fixed = check("top_k_sample", lambda lg, k, rng: student_top_k_sample(lg, k, np.random.default_rng(0)))
    assert fixed.status == "failed" and "do not come from the rng argument" in fixed.message

    def quantiles(logits, k, rng):  # the i-th of n equal rows gets the token whose CDF band holds (i + 0.5) / n
        rows, first = np.unique(logits, axis=0, return_inverse=True)
        out = np.empty(len(logits), np.int64)
        for r, row in enumerate(rows):
            at = np.flatnonzero(first.ravel() == r)
            p = np.where(row >= np.sort(row)[-k], np.exp(row - row.max()), 0)
            cdf = np.cumsum(p / p.sum())
            out[at] = np.minimum(np.searchsorted(cdf, (np.arange(len(at)) + 0.5) / len(at)), len(row) - 1)
        return out
    result = check("top_k_sample", quantiles)
    assert result.status == "failed" and "rng argument" in result.message


def test_sampling_at_temperature_1_1_fails_and_the_right_sampler_passes_on_any_seed():
    def inverse_cdf(logits, k, rng, temperature=1.0):  # vectorised: the seeds below run quickly
        p = np.exp((logits - logits.max(-1, keepdims=True)) / temperature)
        p = np.where(logits >= np.sort(logits, -1)[:, -k][:, None], p, 0)
        cdf = np.cumsum(p / p.sum(-1, keepdims=True), -1)
        return np.minimum((cdf < rng.random((len(p), 1))).sum(-1), logits.shape[-1] - 1)
    hot = check("top_k_sample", lambda lg, k, rng: inverse_cdf(lg, k, rng, 1.1))
    assert hot.status == "failed" and "temperature 1" in hot.message, hot.message
    for seed in (1, 2, 3, 4):
        result = check("top_k_sample", inverse_cdf, seed=seed)
        assert result.passed, result.message


def test_sampling_bad_returns():
    assert "integers" in check("top_k_sample", lambda lg, k, rng: np.zeros(len(lg))).message
    assert "shape" in check("top_k_sample", lambda lg, k, rng: np.zeros((len(lg), 1), int)).message
    assert "outside [0, 10)" in check("top_k_sample", lambda lg, k, rng: np.full(len(lg), 99)).message


class Weird:
    def __array__(self, *a, **k):
        raise RuntimeError("no")


WEIRD_RETURNS = [None, 3, 2.5, "text", [1, 2], (), {}, object(), Weird(), np.zeros(0), np.array(np.nan),
                 np.array(["a", "b"]), np.zeros((2, 2), dtype=object), (x for x in range(3)), np.float32(1.0),
                 np.array([np.inf, -np.inf]), (np.zeros(3), np.zeros(3), np.zeros(3)), (None, None)]


@pytest.mark.parametrize("name", list(EXERCISES))
def test_check_never_raises_whatever_is_returned(name):
    for value in WEIRD_RETURNS:
        result = check(name, lambda *args, value=value: value)
        assert isinstance(result, CheckResult)
        assert result.status == "failed", (name, value, result.message)
        assert result.message and "grader itself failed" not in result.message, (name, value, result.message)


@pytest.mark.parametrize("error", [ZeroDivisionError, KeyError, IndexError, TypeError, MemoryError, RecursionError,
                                   SystemExit, AssertionError])
def test_check_never_raises_whatever_is_raised(error):
    def fn(*args):
        raise error("boom")
    result = check("quick_gelu", fn)
    assert result.status == "failed" and error.__name__ in result.message


def test_result_displays():
    passed, failed = check("quick_gelu", student_quick_gelu), check("quick_gelu", lambda x: np.maximum(x, 0))
    assert str(passed).startswith("\u2705 quick_gelu: passed")
    assert repr(failed).startswith("\u274c quick_gelu: failed")
    html = failed._repr_html_()
    assert "<b>quick_gelu</b>" in html and "ReLU" in html
    assert "<script>" not in check("layer_norm", lambda x, w, eps=1e-5: 1 / 0)._repr_html_()


def test_describe_lists_signature_and_cases():
    text = exercises.describe("kv_cache_step")
    assert "kv_cache_step(q, k, v, past_k, past_v, scale)" in text and "P=4, T=1" in text
    assert "no exercise named" in exercises.describe("nope")


def test_inputs_are_seeded_and_small():
    for ex in EXERCISES.values():
        for i, case in enumerate(ex.cases):
            a = case.make(np.random.default_rng(exercises.SEED + i))
            b = case.make(np.random.default_rng(exercises.SEED + i))
            arrays = [x for x in a if isinstance(x, np.ndarray)]
            assert all(np.array_equal(x, y) for x, y in zip(arrays, b))
            assert sum(x.size for x in arrays) <= 150_000  # top_k_sample: 3 x 4000 rows of 10


# ---- hints only for the mistake actually made ---------------------------------------------------
@pytest.mark.parametrize("name,fn", [
    ("causal_attention", lambda q, k, v, s: student_attention(q, k, v, s)[0].astype(np.float64)),
    ("layer_norm", lambda x, w, eps=1e-5: student_layer_norm(x, w, eps).astype(np.float64)),
    ("top_k_filter", lambda lg, k: student_top_k_filter(lg, k).astype(np.float64)),
    ("kmeans_step", lambda p, c: student_kmeans_step(p, c).astype(np.float64)),
])
def test_only_the_dtype_wrong_says_exactly_that_and_names_no_mistake(name, fn):
    result = check(name, fn)
    assert result.status == "failed" and result.mistake is None
    assert "The values are right: only the dtype is wrong" in result.message
    assert "Likely mistake" not in result.message and "Reminder" not in result.message


def test_a_mistake_invisible_on_a_case_is_not_named_there():
    """With scale = 1/sqrt(D) (case 1), hard-coding 1/sqrt(D) gives the right answer: a student whose
    output is wrong some other way on case 1 is not told they hard-coded the scale."""
    def scaled_and_float64(q, k, v, s):
        return student_attention(q, k, v, s)[0].astype(np.float64) * 1.5
    result = check("causal_attention", scaled_and_float64)
    assert "instead of the scale argument" not in result.message
    hard_coded = check("causal_attention", EXERCISES["causal_attention"].mistakes[5].fn)
    assert hard_coded.mistake == "scale_hard_coded" and "case 2" in hard_coded.message


def test_wrong_output_matching_no_mistake_gets_the_reminder_not_a_guess():
    result = check("quick_gelu", lambda x: x * 0.5)
    assert result.mistake is None and "Likely mistake" not in result.message and "Reminder" in result.message


def renormalised_in_float32_choice(logits, k, rng):
    ids = []
    for row in logits:
        p = np.exp(row - row.max()).astype(np.float32)
        p[row < np.sort(row)[-k]] = 0
        ids.append(rng.choice(len(row), p=np.round(p / p.sum(), 3)))  # renormalised, imprecisely
    return np.array(ids)


def renormalised_cdf_ending_below_one(logits, k, rng):
    kth = np.sort(logits, -1)[:, -k][:, None]
    p = np.where(logits >= kth, np.exp(logits - logits.max(-1, keepdims=True)), 0)
    p = np.round(p / p.sum(-1, keepdims=True), 3)  # sums to 1 within 0.0015
    u = rng.random(len(logits))
    return np.array([np.searchsorted(np.cumsum(row), x, side="right") for row, x in zip(p, u)])


def test_top_k_sample_renormalised_imprecisely_is_not_told_it_did_not_renormalise():
    choice = check("top_k_sample", renormalised_in_float32_choice)
    assert choice.status == "failed" and "do not sum to 1" in choice.message
    assert "Either the kept probabilities were not renormalised" in choice.message and "float32" in choice.message
    cdf = check("top_k_sample", renormalised_cdf_ending_below_one)
    assert cdf.status == "failed" and cdf.mistake is None
    assert "the probabilities were renormalised" in cdf.message and "not renormalised" not in cdf.message
    not_renormalised = check("top_k_sample", EXERCISES["top_k_sample"].mistakes[2].fn)
    assert not_renormalised.mistake == "no_renormalise"


# ---- the engine apart from the calls: what the class grader uses ----------------------------------
def test_judge_works_on_returned_arrays_alone():
    from minigpt_pixels.exercises import engine
    ex = EXERCISES["layer_norm"]
    cases = exercises.make_cases(ex, seed=7)
    right = [engine.Returned(student_layer_norm(*a)) for a in cases]
    assert exercises.judge(ex, cases, right).passed
    assert not exercises.judge(ex, cases, right[:2]).passed  # a case with no result is not a pass
    wrong = [engine.Returned(np.asarray(a[0])) for a in cases]
    assert exercises.judge(ex, cases, wrong).status == "failed"
    assert exercises.judge(ex, cases, [engine.NotDone()]).status == "not done"
    assert "longer than 3 s" in exercises.judge(ex, cases, [engine.TimedOut(3)]).message
    assert "returned None" in exercises.judge(ex, cases, [engine.Returned(None)]).message
    tensor = engine.Opaque("Tensor", has_numpy=True)
    assert ".numpy()" in exercises.judge(ex, cases, [engine.Returned(tensor)]).message


def test_another_seed_draws_other_inputs():
    ex = EXERCISES["quick_gelu"]
    a, b = exercises.make_cases(ex)[1][0], exercises.make_cases(ex, seed=99)[1][0]
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_one_module_per_exercise():
    import importlib
    for name, ex in EXERCISES.items():
        assert importlib.import_module(f"minigpt_pixels.exercises.{name}").EXERCISE is ex
        assert ex.points >= 1
    assert [n for names in exercises.NOTEBOOKS.values() for n in names] == list(EXERCISES)


def test_the_k_means_exercise_is_the_step_fit_palette_repeats():
    """palette.lloyd_step is both fit_palette's iteration and the exercise's reference."""
    from unittest import mock

    from minigpt_pixels import palette
    pixels = np.random.default_rng(0).uniform(-1, 1, size=(300, 3)).astype(F32)
    with mock.patch.object(palette, "lloyd_step", wraps=palette.lloyd_step) as step:
        palette.fit_palette(pixels, 4, seed=0)
    assert step.call_count >= 1
    args = exercises.make_cases(EXERCISES["kmeans_step"])[1]  # the case with an empty cluster
    np.testing.assert_array_equal(EXERCISES["kmeans_step"].reference(*args), palette.lloyd_step(*args, exact=True))
    assert check("kmeans_step", lambda p, c: palette.lloyd_step(p, c)).passed


def test_every_module_s_all_names_what_it_defines():
    """`from minigpt_pixels.exercises.<module> import *` works for every module of the exercises and grader."""
    import importlib
    import pkgutil
    for info in pkgutil.iter_modules(exercises.__path__):
        module = importlib.import_module(f"minigpt_pixels.exercises.{info.name}")
        missing = [n for n in getattr(module, "__all__", []) if not hasattr(module, n)]
        assert not missing, (info.name, missing)
    assert not [n for n in exercises.__all__ if not hasattr(exercises, n)]


def test_every_case_is_drawn_from_the_seed():
    """Issue 22: a memorised output passes no case once the grader draws another seed."""
    def arrays(x):
        return [a for v in x for a in (arrays(v) if isinstance(v, tuple) else [v]) if isinstance(a, np.ndarray)]
    for name, ex in EXERCISES.items():
        for i, (a, b) in enumerate(zip(exercises.make_cases(ex, 1), exercises.make_cases(ex, 2))):
            assert not all(np.array_equal(x, y) for x, y in zip(arrays(a), arrays(b))), (name, ex.cases[i].about)
