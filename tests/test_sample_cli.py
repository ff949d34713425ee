"""`python -m minigpt_pixels.sample` end to end: the PNG it writes, its options, and its one-line errors."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import minigpt_pixels
from minigpt_pixels.config import ImageGPTConfig
from minigpt_pixels.model import ImageGPTForCausalImageModeling, ImageGPTForImageClassification
from minigpt_pixels.palette import dequantize
from minigpt_pixels.processor import ImageGPTImageProcessor
from minigpt_pixels import generation, sample as sample_module
from minigpt_pixels.sample import main


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A random 6x6 model with an 8-grey palette, saved in the HF layout."""
    d = tmp_path_factory.mktemp("tiny_model")
    cfg = ImageGPTConfig(vocab_size=9, n_positions=36, n_embd=16, n_layer=1, n_head=2)
    ImageGPTForCausalImageModeling(cfg, seed=0).save_pretrained(d)
    greys = np.linspace(-1, 1, 8, dtype=np.float32)
    ImageGPTImageProcessor(clusters=np.stack([greys] * 3, axis=1), size={"height": 6, "width": 6}).save_pretrained(d)
    return d


def on_screen(text):
    """The lines a terminal shows for `text`: a carriage return redraws its line (a progress bar clearing
    itself leaves nothing)."""
    return [shown for line in text.split("\n") if (shown := line.rsplit("\r", 1)[-1].strip())]


def run_main(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_default_run_writes_a_grid_of_samples(tmp_path, monkeypatch, capsys):
    """No arguments: the shipped default model, samples.png in the current directory."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["--num-samples", "4", "--no-progress"], capsys)
    assert code == 0, err
    assert "wrote samples.png" in out and "tokens/s" in out
    img = np.asarray(Image.open(tmp_path / "samples.png"))
    proc = ImageGPTImageProcessor.from_pretrained(minigpt_pixels.DEFAULT_MODEL)
    h = proc.size["height"]
    assert img.ndim == 3 and img.shape[2] == 3 and img.shape[0] >= 2 * h * 2  # a 2x2 grid, enlarged
    palette = {tuple(c) for c in dequantize(np.arange(len(proc.clusters)), proc.clusters)}
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert len(colours - palette - {(255, 255, 255)}) == 0  # only palette colours and the white border
    assert len(colours & palette) > 2  # not a blank picture


def test_default_name_never_replaces_a_file(tmp_path, monkeypatch, capsys, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "samples.png").write_bytes(b"precious")
    (tmp_path / "samples-1.png").write_bytes(b"also precious")
    code, out, _ = run_main(["--model", str(tiny_model_dir), "--num-samples", "2", "--no-progress"], capsys)
    assert code == 0 and "wrote samples-2.png" in out
    assert (tmp_path / "samples.png").read_bytes() == b"precious"
    assert (tmp_path / "samples-1.png").read_bytes() == b"also precious"
    Image.open(tmp_path / "samples-2.png").verify()


def test_explicit_out_needs_force_to_replace(tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "mine.png"
    out.write_bytes(b"keep me")
    code, _, err = run_main(["--model", str(tiny_model_dir), "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and "exists; pass --force" in err and out.read_bytes() == b"keep me"
    code, _, err = run_main(["--model", str(tiny_model_dir), "--out", str(out), "--force", "--no-progress"], capsys)
    assert code == 0, err
    Image.open(out).verify()


def test_same_seed_same_png_other_seed_other_png(tmp_path, capsys, tiny_model_dir):
    def png(seed, name):
        argv = ["--model", str(tiny_model_dir), "--seed", str(seed), "--out", str(tmp_path / name), "--no-progress",
                "--num-samples", "6", "--top-k", "5", "--temperature", "1.2"]
        assert run_main(argv, capsys)[0] == 0
        return np.asarray(Image.open(tmp_path / name))
    a, b, c = png(1, "a.png"), png(1, "b.png"), png(2, "c.png")
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_completion_grid(tmp_path, capsys, tiny_model_dir):
    prompt = tmp_path / "prompt.png"
    Image.fromarray((np.arange(36).reshape(6, 6) * 7).astype(np.uint8)).save(prompt)
    out = tmp_path / "completions.png"
    code, stdout, err = run_main(["--model", str(tiny_model_dir), "--prompt", str(prompt), "--prompt-rows", "2",
                                  "--num-samples", "3", "--out", str(out), "--scale", "1", "--no-progress"], capsys)
    assert code == 0, err
    assert "3 completions" in stdout and "top 2 of 6 rows" in stdout
    grid = np.asarray(Image.open(out))
    assert grid.shape == (1 + 6 + 1, 1 + 5 * 7, 3)  # original, kept rows, three completions
    cells = [grid[1:7, 1 + 7 * j:7 + 7 * j] for j in range(5)]
    for completion in cells[2:]:
        np.testing.assert_array_equal(completion[:2], cells[0][:2])  # the kept rows are kept
    assert (cells[1][2:] == 128).all()  # the part the model fills in is shown grey


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent"], "--model /nonexistent: no such directory"),
    (["--top-k", "0"], "--top-k must be an integer >= 1, got 0"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--temperature", "nan"], "--temperature must be > 0 and finite, got nan"),
    (["--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    (["--num-samples", "0"], "--num-samples must be >= 1"),
    (["--prompt-rows", "3"], "--prompt-rows needs --prompt"),
])
def test_bad_arguments_one_line_error(args, message, capsys, tmp_path, monkeypatch):
    """Each refused before the model loads (the old code loaded it, then said "expected non-negative
    integer" for --seed -1)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sample_module, "load_model", lambda *a: pytest.fail("loaded the model first"))
    code, _, err = run_main(args + ["--no-progress"], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_bad_model_dirs_and_prompts(tmp_path, capsys, tiny_model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_main(["--model", str(empty)], capsys)
    assert code == 2 and "no preprocessor_config.json" in err
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (no_weights / name).write_bytes((tiny_model_dir / name).read_bytes())
    code, _, err = run_main(["--model", str(no_weights), "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and str(no_weights) in err and len(on_screen(err)) == 1, err  # the bar cleared, one line
    for prompt, rows, message in [(tmp_path / "missing.png", "2", "missing.png"),
                                  (tiny_model_dir / "config.json", "2", "config.json"),
                                  (None, "6", "--prompt-rows must be between 1 and 5"),
                                  (None, "0", "--prompt-rows must be between 1 and 5")]:
        if prompt is None:
            prompt = tmp_path / "ok.png"
            Image.fromarray(np.zeros((6, 6), np.uint8)).save(prompt)
        code, _, err = run_main(["--model", str(tiny_model_dir), "--prompt", str(prompt), "--prompt-rows", rows,
                                 "--out", str(tmp_path / "y.png"), "--no-progress"], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "y.png").exists()


def test_too_long_for_n_positions(tmp_path, capsys):
    d = tmp_path / "small_positions"
    cfg = ImageGPTConfig(vocab_size=9, n_positions=20, n_embd=16, n_layer=1, n_head=2)
    ImageGPTForCausalImageModeling(cfg, seed=0).save_pretrained(d)
    greys = np.linspace(-1, 1, 8, dtype=np.float32)
    ImageGPTImageProcessor(clusters=np.stack([greys] * 3, axis=1), size={"height": 6, "width": 6}).save_pretrained(d)
    code, _, err = run_main(["--model", str(d), "--out", str(tmp_path / "z.png")], capsys)
    assert code == 2 and "36 tokens per image, more than the model's n_positions 20" in err


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, tiny_model_dir):
    """Outside the simulator, on a machine without a GPU, --device cuda is a one-line error naming CUDA."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    probe = subprocess.run([sys.executable, "-c", "from numba import cuda; print(cuda.is_available())"],
                           capture_output=True, text=True, env=env)
    has_gpu = probe.stdout.strip() == "True"
    out = tmp_path / "c.png"
    r = subprocess.run([sys.executable, "-m", "minigpt_pixels.sample", "--model", str(tiny_model_dir), "--device",
                        "cuda", "--out", str(out), "--no-progress"], capture_output=True, text=True, env=env)
    if has_gpu:
        assert r.returncode == 0 and out.exists(), r.stderr
    else:
        assert r.returncode == 2 and "CUDA" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "--device cpu" in r.stderr and "model.to" not in r.stderr, r.stderr  # said for the command line
        assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_help_shows_defaults_and_console_script():
    r = subprocess.run([sys.executable, "-m", "minigpt_pixels.sample", "--help"], capture_output=True, text=True,
                       env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert r.returncode == 0
    text = " ".join(r.stdout.split())  # argparse wraps lines at the terminal width
    for option in ("--model", "--num-samples", "--temperature", "--top-k", "--top-p", "--seed", "--prompt",
                   "--prompt-rows", "--out", "--force", "--scale", "--greedy", "--device", "--progress",
                   "(default: 16)", "(default: 1.0)", "an existing file is refused unless --force"):
        assert option in text, option
    documented = {a.option_strings[0] for a in sample_module.build_parser()._actions}
    assert all(option in text for option in documented), documented  # every option, none forgotten


def test_help_shows_each_default_once():
    """The old help said "(default: half the image height) (default: None)"."""
    text = " ".join(sample_module.build_parser().format_help().split())
    assert "(default: None)" not in text
    assert text.count("(default: half the image height)") == 1 and "(default: 16)" in text


def test_nan_weights_are_refused_before_sampling(tmp_path, capsys, tiny_model_dir):
    """The old code sampled token 0 everywhere from NaN logits, wrote the flat picture and exited 0."""
    d = tmp_path / "nan_model"
    model = ImageGPTForCausalImageModeling.from_pretrained(tiny_model_dir)
    params = {k: np.array(v) for k, v in model.params.items()}
    params["transformer.h.0.attn.c_proj.weight"][3, 5] = np.nan
    ImageGPTForCausalImageModeling(model.config, params).save_pretrained(d)
    (d / "preprocessor_config.json").write_bytes((tiny_model_dir / "preprocessor_config.json").read_bytes())
    code, _, err = run_main(["--model", str(d), "--out", str(tmp_path / "x.png"), "--no-progress"], capsys)
    assert code == 2 and "transformer.h.0.attn.c_proj.weight" in err and "NaN" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


def test_the_progress_bar_shows_before_the_model_loads(tmp_path, monkeypatch, capsys, tiny_model_dir):
    """The main job's bar is on screen at once: before the model loads (and any kernel compiles), and it
    counts every token of every chunk in one bar."""
    seen = {}
    real_load = sample_module.load_model

    def load_model(path, device):
        seen["err"] = capsys.readouterr().err  # what the user saw before loading began
        return real_load(path, device)

    bars = []

    def progress_bar(total, disable=False):
        bars.append(real_bar(total, disable))
        return bars[-1]

    real_bar = generation.progress_bar
    monkeypatch.setattr(sample_module, "progress_bar", progress_bar)
    monkeypatch.setattr(sample_module, "load_model", load_model)
    monkeypatch.setattr(sample_module, "MAX_CHUNK", 2)  # 3 chunks, one bar
    code, _, err = run_main(["--model", str(tiny_model_dir), "--num-samples", "5", "--out", str(tmp_path / "s.png"),
                             "--progress"], capsys)
    assert code == 0, err
    assert "sampling:   0%" in seen["err"] and "0/180" in seen["err"], seen["err"]  # 5 samples x 36 tokens
    assert len(bars) == 1 and bars[0].n == bars[0].total == 180  # one bar, filled; not one per chunk
    assert "sampling:   0%" not in err


def test_no_progress_prints_no_bar(tmp_path, capsys, tiny_model_dir):
    code, _, err = run_main(["--model", str(tiny_model_dir), "--num-samples", "2", "--out", str(tmp_path / "s.png"),
                             "--no-progress"], capsys)
    assert code == 0 and "sampling" not in err, err


def test_a_classifier_checkpoint_is_refused(tmp_path, capsys, tiny_model_dir):
    """The old code sampled from a randomly initialised LM head: noise, exit 0."""
    d = tmp_path / "classifier"
    config = ImageGPTConfig.from_pretrained(tiny_model_dir, num_labels=3)
    ImageGPTForImageClassification(config, seed=0).save_pretrained(d)
    (d / "preprocessor_config.json").write_bytes((tiny_model_dir / "preprocessor_config.json").read_bytes())
    code, _, err = run_main(["--model", str(d), "--out", str(tmp_path / "x.png"), "--no-progress"], capsys)
    assert code == 2 and "this is a classifier: " in err and "no lm_head.weight" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


def test_a_temperature_that_overflows_float32_samples_as_greedy(tmp_path, capsys):
    """--temperature 1e-40 made every pixel token 0 (one flat colour, exit 0); now it is --greedy's limit."""
    def grid(*flags):
        out = tmp_path / f"{len(flags)}.png"
        code, _, err = run_main(["--num-samples", "2", "--out", str(out), "--no-progress", *flags], capsys)
        assert code == 0, err
        return np.asarray(Image.open(out))
    greedy = grid("--greedy")
    np.testing.assert_array_equal(grid("--temperature", "1e-40", "--seed", "3"), greedy)
    assert len(np.unique(greedy.reshape(-1, 3), axis=0)) > 2  # not one flat colour (and the white border)


STOPPED_WHILE_WRITING = textwrap.dedent("""
    import os, signal, sys
    import PIL.Image
    from minigpt_pixels import sample

    real_save = PIL.Image.Image.save

    def save(self, fp, *args, **kwargs):  # the signal arrives while the temporary file is half written
        fp.write(b"half an image")
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        real_save(self, fp, *args, **kwargs)

    PIL.Image.Image.save = save
    sys.exit(sample.main(sys.argv[2:]))
""")


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_it_as_ctrl_c_does(name, tmp_path, tiny_model_dir):
    """kill, timeout, Slurm pre-emption, docker stop, a closed terminal: the old code died at once and left
    .out.png.<hex>.tmp beside --out; now the temporary file is removed and it exits 128 + the signal."""
    if not hasattr(signal, name):
        pytest.skip(f"this platform has no signal.{name} (Windows): nothing to send")
    folder = tmp_path / "results"
    folder.mkdir()
    r = subprocess.run([sys.executable, "-c", STOPPED_WHILE_WRITING, name, "--model", str(tiny_model_dir),
                        "--device", "numpy", "--num-samples", "2", "--out", str(folder / "out.png"), "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 128 + getattr(signal, name), (r.returncode, r.stderr)
    assert r.stderr.strip() == f"interrupted ({name}); nothing written", r.stderr
    assert os.listdir(folder) == []  # neither the image nor its temporary file
