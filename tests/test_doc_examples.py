"""The ImageGPT documentation's four examples (transformers' model page), run here with the minimal
translation: `from transformers import` -> `from minigpt_pixels import`, the hub name -> a local HF-layout
directory (the shipped default model), the image URL -> a local image file. Each runs with
return_tensors "np" and "pt" and is checked against transformers itself on the same weights and image.

The generation example's last step, `output[:, 1:].detach().cpu().numpy()`, reads `np.asarray(output[:, 1:])`
here: `generate` returns a NumPy array, and np.asarray takes a torch tensor alike; matplotlib is left out.
"""

import shutil

import numpy as np
import pytest
from PIL import Image

from minigpt_pixels import DEFAULT_MODEL

from .conftest import report

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.live
TOL = 1e-4  # float32 through 4 blocks, against torch


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    """A local stand-in for the docs' COCO photo: a 40x30 RGB picture with structure at every scale."""
    y, x = np.mgrid[0:30, 0:40]
    rgb = np.stack([x * 6, y * 8, (x * y) % 256], axis=-1).astype(np.uint8)
    path = tmp_path_factory.mktemp("image") / "000000039769.png"
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A classification checkpoint made by transformers from the default model (its score head drawn by
    torch once, then saved), so both libraries load the same classifier weights."""
    torch.manual_seed(0)
    hf = transformers.ImageGPTForImageClassification.from_pretrained(DEFAULT_MODEL)
    directory = tmp_path_factory.mktemp("classifier")
    hf.save_pretrained(directory)
    shutil.copy(f"{DEFAULT_MODEL}/preprocessor_config.json", directory)
    return str(directory)


def test_configuration_example():
    from minigpt_pixels import ImageGPTConfig, ImageGPTModel

    # Initializing a ImageGPT configuration
    configuration = ImageGPTConfig()

    # Initializing a model (with random weights) from the configuration
    model = ImageGPTModel(configuration)

    # Accessing the model configuration
    configuration = model.config

    theirs = transformers.ImageGPTConfig()
    for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "activation_function"):
        assert getattr(configuration, name) == getattr(theirs, name), name
    assert model.num_parameters() == sum(p.numel() for p in transformers.ImageGPTModel(theirs).parameters())


@pytest.mark.parametrize("return_tensors", ["np", "pt"])
def test_image_gpt_model_example(image_path, return_tensors):
    from minigpt_pixels import AutoImageProcessor, ImageGPTModel

    image = Image.open(image_path)

    image_processor = AutoImageProcessor.from_pretrained(DEFAULT_MODEL)
    with pytest.warns(UserWarning, match="ignoring lm_head.weight"):  # the body alone, as transformers warns
        model = ImageGPTModel.from_pretrained(DEFAULT_MODEL)

    inputs = image_processor(images=image, return_tensors=return_tensors)
    outputs = model(**inputs)
    last_hidden_states = outputs.last_hidden_state

    hf_inputs = transformers.AutoImageProcessor.from_pretrained(DEFAULT_MODEL)(images=image, return_tensors="pt")
    np.testing.assert_array_equal(np.asarray(inputs["input_ids"]), hf_inputs["input_ids"].numpy())
    with torch.no_grad():
        theirs = transformers.ImageGPTModel.from_pretrained(DEFAULT_MODEL).eval()(**hf_inputs).last_hidden_state
    assert last_hidden_states.shape == (1, 64, 96) and last_hidden_states.dtype == np.float32
    report("docs example ImageGPTModel last_hidden_state", last_hidden_states, theirs.numpy(), TOL)


@pytest.mark.parametrize("return_tensors", ["np", "pt"])
def test_unconditional_generation_example(return_tensors):
    from minigpt_pixels import AutoImageProcessor, ImageGPTForCausalImageModeling

    image_processor = AutoImageProcessor.from_pretrained(DEFAULT_MODEL)
    model = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    # unconditional generation of 8 images
    batch_size = 4
    context = torch.full((batch_size, 1), model.config.vocab_size - 1)  # initialize with SOS token
    context = context.to(device)
    if return_tensors == "np":
        context = context.numpy()
    output = model.generate(
        input_ids=context, max_length=model.config.n_positions + 1, temperature=1.0, do_sample=True, top_k=40
    )

    clusters = image_processor.clusters
    height = image_processor.size["height"]
    width = image_processor.size["width"]

    samples = np.asarray(output[:, 1:])
    samples_img = [
        np.reshape(np.rint(127.5 * (clusters[s] + 1.0)), [height, width, 3]).astype(np.uint8) for s in samples
    ]  # convert color cluster tokens back to pixels

    assert model.device in ("numpy", "cpu")  # torch's "cpu" is the default device's choice
    sos, colours = model.config.vocab_size - 1, len(clusters)  # the default model: 16 colours, SOS 16, 8x8
    assert output.shape == (4, model.config.n_positions + 1) and (np.asarray(output[:, 0]) == sos).all()
    assert samples.min() >= 0 and samples.max() < colours
    assert [img.shape for img in samples_img] == [(height, width, 3)] * 4
    # the model that sampled them scores the samples as transformers does, every position
    hf = transformers.ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL).eval()
    with torch.no_grad():
        theirs = hf(torch.as_tensor(np.asarray(output[:, :-1]))).logits.numpy()  # [4, 64, 16]
    report("docs example generation, logits of the samples", model(np.asarray(output[:, :-1])).logits, theirs, TOL)


@pytest.mark.parametrize("return_tensors", ["np", "pt"])
def test_image_classification_example(image_path, classifier_dir, return_tensors):
    from minigpt_pixels import AutoImageProcessor, ImageGPTForImageClassification

    image = Image.open(image_path)

    image_processor = AutoImageProcessor.from_pretrained(classifier_dir)
    model = ImageGPTForImageClassification.from_pretrained(classifier_dir)

    inputs = image_processor(images=image, return_tensors=return_tensors)
    outputs = model(**inputs)
    logits = outputs.logits

    hf_inputs = transformers.AutoImageProcessor.from_pretrained(classifier_dir)(images=image, return_tensors="pt")
    with torch.no_grad():
        theirs = transformers.ImageGPTForImageClassification.from_pretrained(classifier_dir).eval()(**hf_inputs)
    assert logits.shape == (1, 2)
    report("docs example classification logits", logits, theirs.logits.numpy(), TOL)


def test_auto_names_resolve_to_this_package(classifier_dir):
    from minigpt_pixels import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification
    from minigpt_pixels.config import ImageGPTConfig
    from minigpt_pixels.model import ImageGPTForImageClassification, ImageGPTModel
    from minigpt_pixels.processor import ImageGPTImageProcessor

    assert type(AutoConfig.from_pretrained(classifier_dir)) is ImageGPTConfig
    assert type(AutoImageProcessor.from_pretrained(classifier_dir)) is ImageGPTImageProcessor
    with pytest.warns(UserWarning, match="ignoring score.weight"):  # the body without its head
        assert type(AutoModel.from_pretrained(classifier_dir)) is ImageGPTModel
    model = AutoModelForImageClassification.from_pretrained(classifier_dir)
    assert type(model) is ImageGPTForImageClassification
    assert type(AutoModel.from_config(model.config)) is ImageGPTModel
    with pytest.raises(TypeError, match="from_pretrained"):
        AutoImageProcessor()


def test_to_takes_a_torch_device_and_names_the_choice():
    from minigpt_pixels import ImageGPTForCausalImageModeling
    from minigpt_pixels.backends import auto_device, device_name

    model = ImageGPTForCausalImageModeling.from_pretrained(DEFAULT_MODEL)
    assert model.to(torch.device("cpu")).device == auto_device(model.config)  # the processor: "auto"'s choice
    assert model.to("cpu").device == "cpu"  # the name "cpu" is still the Numba backend
    assert device_name(torch.device("cuda")) == device_name(torch.device("cuda:0")) == "cuda"  # no GPU needed

    class Accelerator:  # anything with a .type, as transformers' code passes devices
        type = "tpu"

    with pytest.raises(ValueError, match="unknown device .*torch.device of type 'cpu' or 'cuda'"):
        model.to(Accelerator())
