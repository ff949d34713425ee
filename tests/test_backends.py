"""The structure the backends promise (backends.py), checked:

1. every backend holds the reference's functions under the reference's names and signatures, and each
   of kernels/cpu.py's says which layers.py function it mirrors and gives that function's result;
2. the one forward (model.forward) gives the same hidden states on "numpy" and "cpu", and the "cpu"
   backend's fusion of it (a batch's decode step) gives forward's numbers, or declines;
3. layers.py's `f` and `f_forward` are one body: the same bits;
4. one check, one message, whichever door an input comes in by (model, backprop);
5. the package's imports form no circle, counting imports inside functions.
"""

import ast
import inspect
import pathlib
import re

import numpy as np
import pytest
from numba import cuda

from minigpt_pixels import backends, layers
from minigpt_pixels.cache import KVCache
from minigpt_pixels.config import ImageGPTConfig
from minigpt_pixels.inputs import ModelInputError
from minigpt_pixels.kernels import cpu
from minigpt_pixels.inputs import ForwardInputs
from minigpt_pixels.model import (ImageGPTForCausalImageModeling, ImageGPTForImageClassification,
                                  forward, init_weights, transformer_shapes)

from .conftest import report
from .test_kernels_cuda import CFG as CUDA_CFG
from .test_kernels_cuda import quick_thread_switches, small_tiles  # noqa: F401 (fixtures: a quick simulator)

F32 = np.float32
TOL = 1e-5  # a kernel against the reference on O(1) float32 values
NAMES = ("embedding", "transformer_block", "self_attention", "mlp", "layer_norm", "lm_head")
PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "minigpt_pixels"


def check(name, ours, ref, tol=TOL):
    assert ours.dtype == np.float32, f"{name}: dtype {ours.dtype}, expected float32"
    return report(name, ours, ref, tol)


def setup(seed=0, **kw):
    cfg = ImageGPTConfig(**{**dict(vocab_size=17, n_positions=40, n_embd=36, n_layer=2, n_head=3), **kw})
    params = init_weights(transformer_shapes(cfg), cfg, seed)
    rng = np.random.default_rng(seed + 1)
    for name in params:  # away from the default init: attention that is not uniform, norms that matter
        params[name] = (params[name] + rng.normal(0, 0.1, params[name].shape)).astype(F32)
    return cfg, params


# ---- 1. the same names, signatures and results ----------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", [backends.CpuBackend, backends.CudaBackend], ids=["cpu", "cuda"])
def test_backend_functions_take_the_references_arguments(backend, name):
    """The reference's parameters, in order, with the same defaults; a backend may add keyword ones
    after them (need_weights: skip computing the attention weights)."""
    ref = list(inspect.signature(getattr(backends.NumpyBackend, name)).parameters.values())
    ours = list(inspect.signature(getattr(backend, name)).parameters.values())
    if ours[0].name == "self":  # a method of the backend (CudaBackend.lm_head), not a plain function
        ours = ours[1:]
    assert [(p.name, p.default) for p in ours[:len(ref)]] == [(p.name, p.default) for p in ref]
    assert all(p.default is not inspect.Parameter.empty for p in ours[len(ref):])


@pytest.mark.parametrize("name", ["transformer_block", "self_attention", "mlp", "layer_norm"])
def test_cpu_functions_say_what_they_mirror(name):
    fn = getattr(backends.CpuBackend, name)
    assert fn.__module__ == cpu.__name__ and f"Mirrors layers.{name}" in fn.__doc__


@pytest.mark.parametrize("act", ["quick_gelu", "gelu_new"])
def test_cpu_mlp_against_reference(act, rng):
    cfg, p = setup()
    x = rng.normal(size=(2, 11, cfg.n_embd)).astype(F32)
    w = [p[f"h.0.mlp.{n}"] for n in ("c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias")]
    check(f"cpu.mlp {act}", cpu.mlp(x, *w, act), layers.mlp(x, *w, act))


@pytest.mark.parametrize("mask_kind", [None, "padding", "general"])
def test_cpu_self_attention_against_reference(mask_kind, rng):
    """The whole sequence, then a prompt and decode steps through a KV cache: outputs (bias included)
    and weights as layers.self_attention gives them; need_weights=False gives None for the weights."""
    cfg, p = setup()
    B, T, C = 2, 23, cfg.n_embd
    x = rng.normal(size=(B, T, C)).astype(F32)
    keep = np.ones((B, T), np.int64)
    keep[1, -4:] = 0
    mask = {None: None, "padding": layers.additive_mask(keep),
            "general": rng.normal(size=(B, 1, T, T)).astype(F32)}[mask_kind]
    w = [p[f"h.1.attn.{n}"] for n in ("c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias")]
    args = (*w, cfg.n_head, F32(0.3))
    ref, ref_weights = layers.self_attention(x, *args, mask=mask)
    ours, weights = cpu.self_attention(x, *args, mask=mask)
    check(f"cpu.self_attention {mask_kind}", ours, ref)
    check(f"cpu.self_attention {mask_kind} weights", weights, ref_weights)
    assert cpu.self_attention(x, *args, mask=mask, need_weights=False)[1] is None

    cache = KVCache(cfg, B, max_length=T)
    outs = []
    for start, stop in [(0, 17)] + [(t, t + 1) for t in range(17, T)]:
        step_mask = None if mask is None else mask[..., start:stop, :stop] if mask_kind == "general" \
            else mask[..., :stop]
        outs.append(cpu.self_attention(x[:, start:stop], *args, mask=step_mask, cache=cache, layer_idx=1)[0])
    check(f"cpu.self_attention {mask_kind} through a KV cache", np.concatenate(outs, axis=1), ref)


def test_cpu_layer_norm_against_reference(rng):
    x = (rng.normal(size=(3, 7, 45)) * 3).astype(F32)
    w = rng.normal(size=45).astype(F32)
    check("cpu.layer_norm", cpu.layer_norm(x, w, 1e-5), layers.layer_norm(x, w, 1e-5))


# ---- 2. one forward on every backend ----------------------------------------------------------------
def inputs_for(ids, **kw):
    return ForwardInputs(ids, None, np.arange(ids.shape[1])[None, :], **kw)


@pytest.mark.parametrize("output_attentions", [False, True])
def test_forward_is_the_same_on_numpy_and_cpu(output_attentions, rng):
    cfg, p = setup()
    ids = rng.integers(0, cfg.vocab_size, size=(2, 19))
    inputs = inputs_for(ids, output_attentions=output_attentions)
    h_ref, hidden_ref, w_ref = forward(backends.NumpyBackend(), p, "", cfg, inputs)
    h, hidden, w = forward(backends.CpuBackend(), p, "", cfg, inputs)
    check("forward last hidden state, cpu vs numpy", h, h_ref)
    assert len(hidden) == len(hidden_ref) == cfg.n_layer + 1 and hidden[-1] is h
    for i, (a, b) in enumerate(zip(hidden, hidden_ref)):
        check(f"forward hidden_states[{i}], cpu vs numpy", a, b)
    for i, (a, b) in enumerate(zip(w, w_ref, strict=True)):
        if output_attentions:
            check(f"forward attentions[{i}], cpu vs numpy", a[0], b[0])
        else:
            assert a == (None,)


def test_cpu_fused_decode_step_is_forward(monkeypatch, rng):
    """On threads, a batch's decode step runs every block in one compiled call and gives forward's
    numbers; a model too small for threads, a prompt, or a step asking for weights or hidden states is
    declined (None) and the model runs forward."""
    monkeypatch.setattr(cpu, "fused_step_threads", lambda work: 2)
    cfg, p = setup()
    ids = rng.integers(0, cfg.vocab_size - 1, size=(3, 9))
    cpu_backend, ref = backends.CpuBackend(), backends.NumpyBackend()
    fused_cache, ref_cache = KVCache(cfg, 3), KVCache(cfg, 3)
    prompt = inputs_for(ids[:, :8], cache=fused_cache)
    assert cpu_backend.fused_forward(p, "", cfg, prompt) is None  # 8 positions: no decode step
    forward(cpu_backend, p, "", cfg, prompt)
    forward(ref, p, "", cfg, inputs_for(ids[:, :8], cache=ref_cache))
    step = ForwardInputs(ids[:, 8:], None, np.array([[8]]), cache=fused_cache)
    assert cpu_backend.fused_forward(p, "", cfg, ForwardInputs(ids[:, 8:], None, np.array([[8]]),
                                                               cache=fused_cache, output_hidden_states=True)) is None
    h = cpu_backend.fused_forward(p, "", cfg, step)
    h_ref, _, _ = forward(ref, p, "", cfg, ForwardInputs(ids[:, 8:], None, np.array([[8]]), cache=ref_cache))
    check("cpu fused decode step vs numpy forward", h, h_ref)
    assert fused_cache.lengths == ref_cache.lengths == [9] * cfg.n_layer
    single = ForwardInputs(ids[:1, 8:], None, np.array([[8]]), cache=KVCache(cfg, 1))
    monkeypatch.undo()
    assert cpu_backend.fused_forward(p, "", cfg, single) is None  # a tiny model: block by block


@pytest.mark.skipif(not cuda.is_available(), reason="no CUDA GPU and the simulator is off")
def test_cuda_backend_runs_plain_inputs_on_the_device_and_the_rest_on_the_host(small_tiles, quick_thread_switches,
                                                                             monkeypatch, rng):
    """Ids alone go through cuda_model's launch list (fused_forward); a mask or hidden states run
    forward with the "cpu" functions on the host. Both give the numpy reference's logits."""
    cfg = ImageGPTConfig(**CUDA_CFG)
    ref = ImageGPTForCausalImageModeling(cfg, seed=0).to("numpy")
    gpu = ImageGPTForCausalImageModeling(cfg, params=ref.params).to("cuda")
    launches = []
    real = gpu._cuda.hidden_states
    monkeypatch.setattr(gpu._cuda, "hidden_states", lambda *a: launches.append(1) or real(*a))
    ids = rng.integers(0, cfg.vocab_size - 1, size=(2, 5))
    mask = np.ones_like(ids)
    mask[1, -2:] = 0
    check("cuda backend, plain logits", gpu(ids).logits, ref(ids).logits, 1e-4)
    assert launches == [1]
    ours = gpu(ids, attention_mask=mask, output_hidden_states=True)
    theirs = ref(ids, attention_mask=mask, output_hidden_states=True)
    assert launches == [1]  # the host ran this one
    check("cuda backend, masked logits (host)", ours.logits, theirs.logits, 1e-4)
    check("cuda backend, hidden_states[-1] (host)", ours.hidden_states[-1], theirs.hidden_states[-1], 1e-4)


def test_model_to_picks_the_backend_once():
    model = ImageGPTForCausalImageModeling(setup()[0], seed=0)
    assert model.device == "numpy" and type(model.backend) is backends.NumpyBackend  # "auto", a small model
    assert isinstance(model.to("cpu").backend, backends.CpuBackend) and model.device == "cpu" and model._cuda is None
    assert type(model.to("numpy").backend) is backends.NumpyBackend and model.device == "numpy"
    assert model.to("auto").device == "numpy"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        model.to("tpu")


def test_auto_picks_the_kernels_by_the_work_of_an_image():
    """'auto' (a new model's device): "cpu" once an image takes AUTO_KERNELS_MIN_WORK multiply-adds, below
    it "numpy"; the work counts every block's matmuls and the head over n_positions positions."""
    small = ImageGPTConfig(vocab_size=17, n_positions=64, n_embd=96, n_layer=4, n_head=4)  # the default model's shape
    C, F, V = 96, 4 * 96, 16
    assert backends.image_work(small) == 64 * (4 * (4 * C * C + 2 * C * F) + C * V)
    assert backends.auto_device(small) == "numpy"
    assert backends.auto_device(ImageGPTConfig.igpt_s()) == "cpu"
    at = ImageGPTConfig(vocab_size=17, n_positions=256, n_embd=256, n_layer=4, n_head=4)
    assert backends.image_work(at) >= backends.AUTO_KERNELS_MIN_WORK > backends.image_work(small) * 8
    assert ImageGPTForCausalImageModeling(at, seed=0).device == "cpu"
    wide = ImageGPTConfig(vocab_size=17, n_positions=64, n_embd=96, n_layer=4, n_head=4, n_inner=96 * 400)
    assert backends.auto_device(wide) == "cpu"  # n_inner counts


def test_numba_is_not_imported_for_a_small_model_on_auto():
    """The point of "auto": the default model's whole job runs without loading Numba at all; "cpu" loads it."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, minigpt_pixels\n"
            "from minigpt_pixels.model import ImageGPTForCausalImageModeling as M\n"
            "m = M.from_pretrained(minigpt_pixels.DEFAULT_MODEL)\n"
            "m.generate(np.full((2, 1), m.config.vocab_size - 1), max_new_tokens=3)\n"
            "print(m.device, 'numba' in sys.modules)\n"
            "m.to('cpu').generate(np.full((2, 1), m.config.vocab_size - 1), max_new_tokens=3)\n"
            "print(m.device, 'numba' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["numpy False", "cpu True"], done.stdout


# ---- 3. f and f_forward: one body ------------------------------------------------------------------
def test_each_function_is_its_forward_without_the_cache(rng):
    cfg, p = setup(add_cross_attention=True)
    B, T, C = 2, 9, cfg.n_embd
    x = rng.normal(size=(B, T, C)).astype(F32)
    enc = rng.normal(size=(B, 5, C)).astype(F32)
    w = p["h.0.ln_1.weight"]
    mlp_w = [p[f"h.0.mlp.{n}"] for n in ("c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias")]
    attn_w = [p[f"h.0.attn.{n}"] for n in ("c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias")]
    cross_w = layers.cross_attention_weights(p, "h.0.")
    pairs = {
        "layer_norm": (layers.layer_norm(x, w), layers.layer_norm_forward(x, w)[0]),
        "quick_gelu": (layers.quick_gelu(x), layers.quick_gelu_forward(x)[0]),
        "mlp": (layers.mlp(x, *mlp_w), layers.mlp_forward(x, *mlp_w)[0]),
        "self_attention": (layers.self_attention(x, *attn_w, 3, F32(0.5))[0],
                           layers.self_attention_forward(x, *attn_w, 3, F32(0.5))[0]),
        "cross_attention": (layers.cross_attention(x, enc, *cross_w, 3, F32(0.5))[0],
                            layers.cross_attention_forward(x, enc, *cross_w, 3, F32(0.5))[0]),
        "transformer_block": (layers.transformer_block(x, p, "h.0.", cfg, 0, encoder_hidden_states=enc)[0],
                              layers.transformer_block_forward(x, p, "h.0.", cfg, 0, encoder_hidden_states=enc)[0]),
    }
    for name, (plain, with_cache) in pairs.items():
        assert plain.dtype == np.float32, name
        np.testing.assert_array_equal(plain, with_cache, err_msg=name)


def test_block_weights_come_from_its_forward_cache(rng):
    cfg, p = setup(add_cross_attention=True)
    x = rng.normal(size=(2, 6, cfg.n_embd)).astype(F32)
    enc = rng.normal(size=(2, 4, cfg.n_embd)).astype(F32)
    _, (w_self, w_cross) = layers.transformer_block(x, p, "h.1.", cfg, 1, encoder_hidden_states=enc)
    assert w_self.shape == (2, 3, 6, 6) and w_cross.shape == (2, 3, 6, 4)
    np.testing.assert_allclose(w_self.sum(-1), 1, rtol=1e-5)
    assert np.all(np.triu(w_self, k=1) == 0)  # causal
    np.testing.assert_allclose(w_cross.sum(-1), 1, rtol=1e-5)


# ---- 4. one check, one message ----------------------------------------------------------------------
def message(fn):
    with pytest.raises(ModelInputError) as err:
        fn()
    return str(err.value)


def test_model_and_backprop_say_the_same_about_bad_labels_and_encoder_states():
    cfg = setup(num_labels=3)[0]
    ids = np.zeros((2, 4), np.int64)
    clf = ImageGPTForImageClassification(cfg, seed=0)
    for labels in (np.array([0, 3]), np.array([0, 1, 2])):
        said = message(lambda: clf(ids, labels=labels))
        assert said == message(lambda: clf.value_and_grad(ids, labels))
    lm = ImageGPTForCausalImageModeling(cfg, seed=0)
    enc = np.zeros((2, 3, cfg.n_embd), F32)
    said = message(lambda: lm(ids, encoder_hidden_states=enc))
    assert "add_cross_attention=False" in said
    assert said == message(lambda: lm.value_and_grad(ids, ids, encoder_hidden_states=enc))
    bad = np.full((2, 4), cfg.vocab_size - 1)  # SOS is never a target
    assert message(lambda: lm(ids, labels=bad)) == message(lambda: lm.value_and_grad(ids, bad))


# ---- 5. imports run one way -------------------------------------------------------------------------
def package_imports():
    """module -> the library modules it imports anywhere in its file (inside functions too). The
    classroom grader (exercises/) is a package apart, not part of the model's layering, and left out."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[1:2] == ("exercises",):
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if parts[-1] == "__init__" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                if node.module:
                    edges.add(f"{base}.{node.module}")
                else:  # `from . import layers`: the submodule, or else a name of the package itself
                    edges.update(f"{base}.{a.name}" if (PACKAGE.parent / base.replace(".", "/") / f"{a.name}.py")
                                 .exists() else base for a in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minigpt_pixels"):
                edges.add(node.module)
        graph[name] = edges
    return {m: {e for e in edges if e in graph and e != m} for m, edges in graph.items()}


def test_no_import_circle():
    graph = package_imports()
    assert {"minigpt_pixels.model", "minigpt_pixels.inputs", "minigpt_pixels.cache"} <= set(graph)
    assert "minigpt_pixels.model" not in graph["minigpt_pixels.generation"] | graph["minigpt_pixels.backprop"]
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            assert state.get(n) != "open", f"import circle: {' -> '.join(path + [n])}"
            if n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


# ---- the rooms: short modules and functions, named caches, valid __all__ ------------------------------
# Issue 24's measure of a readable room: outside kernels/ (whose CUDA and SIMD factories are long by nature),
# no module over 600 lines and no function over 50.
OUTSIDE_KERNELS = sorted(p for p in PACKAGE.rglob("*.py") if "kernels" not in p.relative_to(PACKAGE).parts)


def test_modules_and_functions_outside_the_kernels_are_short():
    assert len(OUTSIDE_KERNELS) > 30, OUTSIDE_KERNELS  # the package itself, not an empty glob
    for path in OUTSIDE_KERNELS:
        name, source = path.relative_to(PACKAGE), path.read_text()
        assert source.count("\n") <= 600, f"{name} has {source.count(chr(10))} lines, more than 600"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 50, f"{name}: {node.name} has {length} lines, more than 50"
            if isinstance(node, ast.ClassDef) and node.name == "ImageGPTPreTrainedModel":
                assert node.end_lineno - node.lineno + 1 < 120, "ImageGPTPreTrainedModel is 120 lines or more"


def test_every_forward_cache_is_a_named_tuple():
    """Each `f_forward` returns (out, an XCache(...) NamedTuple), so its backward reads fields by name;
    dropout_forward's mask is one array, not a tuple."""
    import typing

    from minigpt_pixels import activations, losses
    for module in (layers, activations, losses):
        tree = ast.parse(inspect.getsource(module))
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.endswith("_forward")):
            if fn.name == "dropout_forward":
                continue
            last = [n for n in ast.walk(fn) if isinstance(n, ast.Return)][-1].value
            assert isinstance(last, ast.Tuple) and isinstance(last.elts[1], ast.Call), fn.name
            cls = getattr(module, last.elts[1].func.id)
            assert issubclass(cls, tuple) and hasattr(cls, "_fields") and typing.NamedTuple in cls.__orig_bases__, \
                f"{fn.name} returns a {cls.__name__}, not a NamedTuple"


def test_every_all_names_what_its_module_has():
    import importlib
    for path in PACKAGE.glob("*.py"):
        module = importlib.import_module(f"minigpt_pixels.{path.stem}" if path.stem != "__init__" else "minigpt_pixels")
        missing = [n for n in getattr(module, "__all__", ()) if not hasattr(module, n)]
        assert not missing, f"{module.__name__}.__all__ names {missing}, which it does not have"


# ---- the kernel files, arranged as a reader looks for them (issue 24) ---------------------------------
KERNELS = PACKAGE / "kernels"


def top_level(path):
    """name -> (first line, decorators as source text) of each top-level function of a file, in file order."""
    tree = ast.parse(path.read_text())
    return {n.name: (n.lineno, [ast.unparse(d) for d in n.decorator_list]) for n in tree.body
            if isinstance(n, ast.FunctionDef)}


def layers_line(name):
    return top_level(PACKAGE / "layers.py")[name][0]


def test_cpu_py_opens_with_the_backends_mirrors_in_layers_order_and_holds_no_compiled_loop():
    """kernels/cpu.py's first functions are the ones CpuBackend takes from it, in layers.py's order; the
    @njit bodies they call live in cpu_loops.py, which holds nothing else."""
    mirrors = sorted((name for name in NAMES if getattr(backends.CpuBackend, name).__module__ == cpu.__name__),
                     key=layers_line)
    assert mirrors == ["layer_norm", "mlp", "self_attention", "transformer_block"]
    functions = top_level(KERNELS / "cpu.py")
    assert list(functions)[:len(mirrors)] == mirrors, f"cpu.py opens with {list(functions)[:len(mirrors)]}"
    compiled = [name for name, (_, decorators) in functions.items() if decorators]
    assert not compiled, f"compiled loops in cpu.py (their room is cpu_loops.py): {compiled}"
    loops = top_level(KERNELS / "cpu_loops.py")
    assert len(loops) > 10 and all(decorators and decorators[0].startswith(("njit", "intrinsic"))
                                   for _, decorators in loops.values()), "cpu_loops.py holds only compiled loops"


# kernels/cuda.py's ops: the layers.py function each replaces, then its kernel, launcher and checked wrapper
CUDA_OPS = [("embedding", "embedding_kernel", "launch_embedding", "embedding"),
            ("layer_norm", "layer_norm_kernel", "launch_layer_norm", "layer_norm"),
            ("linear", "matmul_kernel", "launch_linear", "linear"),
            ("attention", "causal_attention_kernel", "launch_causal_attention", "causal_attention"),
            ("attention", "decode_attention_kernel", "launch_decode_attention", "decode_attention"),
            ("self_attention", "append_kv_kernel", "launch_append_kv", None)]  # the model's cache update
NOT_LAUNCHED = "# ==== NOT LAUNCHED BY THE MODEL"


def test_cuda_py_is_one_op_after_another_in_layers_order_with_the_unlaunched_kernels_set_apart():
    source = (KERNELS / "cuda.py").read_text()
    functions = top_level(KERNELS / "cuda.py")
    line = {name: first for name, (first, _) in functions.items()}
    spans = [[line[n] for n in (kernel, launch, wrapper) if n] for _, kernel, launch, wrapper in CUDA_OPS]
    assert all(span == sorted(span) for span in spans), "each op: its kernel, then its launcher, then its wrapper"
    assert all(a[-1] < b[0] for a, b in zip(spans, spans[1:])), "the ops one after another, not interleaved"
    assert [layers_line(op) for op, *_ in CUDA_OPS] == sorted(layers_line(op) for op, *_ in CUDA_OPS), \
        "the ops in layers.py's order"
    # the kernels the model reaches: those named in the launchers cuda_model.py calls
    launchers = set(re.findall(r"\bK\.(launch_\w+)", (KERNELS / "cuda_model.py").read_text()))
    assert launchers == {launch for _, _, launch, _ in CUDA_OPS}
    body = {node.name: ast.get_source_segment(source, node) for node in ast.parse(source).body
            if isinstance(node, ast.FunctionDef)}
    reached = {k for launch in launchers for k in re.findall(r"\b(\w+_kernel)\b", body[launch])}
    kernels = {name for name in functions if name.endswith("_kernel")}
    assert reached < kernels and "skinny_matmul_kernel" in reached
    marker = source[:source.index(NOT_LAUNCHED)].count("\n") + 1
    assert all(line[k] < marker for k in reached), "a kernel the model launches sits in the not-launched block"
    outside = sorted(k for k in kernels - reached if line[k] < marker)
    assert not outside, f"kernels the model never launches outside the labelled block: {outside}"
    device = top_level(KERNELS / "cuda_device.py")
    assert {"require_cuda", "device_empty", "to_device"} <= set(device), "the device plumbing's room"
    assert not any("cuda.jit" in str(decorators) for _, decorators in device.values()), "no kernel in it"
