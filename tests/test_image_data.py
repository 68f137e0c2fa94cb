"""jaxtune.data.image: exact pixels for crops/flips/normalisation, resize shapes, HF parity."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from jaxtune.data.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocessing,
    center_crop,
    decode_image,
    horizontal_flip,
    normalize,
    random_crop,
    random_horizontal_flip,
    resize,
    resize_shorter_side,
    to_rgb,
)
from jaxtune.data.loader import Loader

GRID = np.arange(30, dtype=np.uint8).reshape(5, 6)  # pixel (r, c) = 6 r + c


def test_center_crop_exact_pixels_and_odd_margins():
    # 5x6 -> 3x3: margins 2 (top 1) and 3 (left 1, the extra column on the right).
    np.testing.assert_array_equal(
        center_crop(GRID, 3)[:, :, 0], [[7, 8, 9], [13, 14, 15], [19, 20, 21]])
    np.testing.assert_array_equal(center_crop(GRID, (2, 6))[:, :, 0], GRID[1:3])
    with pytest.raises(ValueError, match=r"crop size \(6, 6\) is larger than the image \(5, 6\)"):
        center_crop(GRID, 6)


def test_random_crop_is_a_window_seeded_and_covers_all_offsets():
    seen = set()
    for seed in range(60):
        crop = random_crop(GRID, (2, 3), np.random.default_rng(seed))[:, :, 0]
        top, left = divmod(int(crop[0, 0]), 6)
        np.testing.assert_array_equal(crop, GRID[top:top + 2, left:left + 3])
        seen.add((top, left))
    assert seen == {(t, l) for t in range(4) for l in range(4)}
    a = random_crop(GRID, 2, np.random.default_rng(5))
    np.testing.assert_array_equal(a, random_crop(GRID, 2, np.random.default_rng(5)))


def test_flips_and_grey_to_rgb():
    np.testing.assert_array_equal(horizontal_flip(GRID)[:, :, 0], GRID[:, ::-1])
    flips = [random_horizontal_flip(GRID, np.random.default_rng(s))[0, 0, 0] == 5 for s in range(200)]
    assert 70 < sum(flips) < 130  # p = 0.5
    rgb = to_rgb(GRID)
    assert rgb.shape == (5, 6, 3) and (rgb == GRID[:, :, None]).all()
    rgba = np.zeros((1, 1, 4), np.uint8) + np.array([1, 2, 3, 4], np.uint8)
    assert to_rgb(rgba).tolist() == [[[1, 2, 3]]]


def test_normalize_exact_values_float32():
    pixel = np.array([[[255, 0, 128]]], np.uint8)
    out = normalize(pixel)  # ImageNet statistics
    expected = (np.array([1.0, 0.0, 128 / 255]) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert out.dtype == np.float32 and out.shape == (1, 1, 3)
    np.testing.assert_allclose(out[0, 0], expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="1 channel"):
        normalize(GRID)


def test_resize_shapes():
    wide = np.zeros((20, 40, 3), np.uint8)
    tall = np.zeros((45, 30, 1), np.uint8)
    assert resize_shorter_side(wide, 10).shape == (10, 20, 3)
    assert resize_shorter_side(tall, 20).shape == (30, 20, 1)   # int(20 * 45 / 30)
    assert resize(wide, (7, 9)).shape == (7, 9, 3)
    flat = np.full((8, 8, 3), 77, np.uint8)   # constant images stay constant
    assert (resize(flat, 5, "bicubic") == 77).all()
    with pytest.raises(TypeError, match="uint8"):
        resize(wide.astype(np.float32), 4)


def test_decode_png_bytes_and_arrays():
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_image(buffer.getvalue()), rgb)  # lossless
    buffer = io.BytesIO()
    Image.fromarray(GRID).save(buffer, format="JPEG")
    assert decode_image(buffer.getvalue()).shape == (5, 6, 1)
    with pytest.raises(TypeError, match="uint8"):
        decode_image(np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("processor,kwargs", [
    ("ConvNextImageProcessorPil", {"size": {"shortest_edge": 32}, "crop_pct": 0.875}),
    ("MobileNetV2ImageProcessorPil", {"size": {"shortest_edge": 40},
                                      "crop_size": {"height": 32, "width": 32}}),
])
def test_matches_hugging_face_image_processors(processor, kwargs):
    transformers = pytest.importorskip("transformers")
    hf = getattr(transformers, processor)(**kwargs)
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3)).astype(np.uint8)
    expected = hf(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = ImagePreprocessing.from_pretrained(hf.to_dict())(image)
    assert ours.dtype == np.float32 and ours.shape == expected.shape == (32, 32, 3)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)  # measured 1.2e-7


def test_from_pretrained_reads_a_checkpoint_directory(tmp_path):
    config = {"do_resize": True, "size": {"height": 16, "width": 12}, "resample": 3,
              "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
              "rescale_factor": 1 / 255}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    prep = ImagePreprocessing.from_pretrained(tmp_path)
    assert prep.resize == (16, 12) and prep.crop_size == (16, 12) and prep.method == "bicubic"
    white = np.full((30, 30), 255, np.uint8)
    np.testing.assert_allclose(prep(white), np.full((16, 12, 3), 2.0), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        ImagePreprocessing.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="crop_size"):
        ImagePreprocessing.from_pretrained({"size": {"shortest_edge": 8}})


def test_image_transforms_in_the_loader_give_nhwc_float32_batches():
    images = np.random.default_rng(2).integers(0, 256, (6, 10, 12)).astype(np.uint8)  # grey
    source = [{"image": img, "label": np.int32(i)} for i, img in enumerate(images)]
    prep = ImagePreprocessing(crop_size=8, resize=9)
    train = Loader(source, batch_size=3, seed=0, random_transform=prep.train_transform())
    evaluation = Loader(source, batch_size=3, shuffle=False, transform=prep.eval_transform())
    with train.iterator() as it:
        batch = next(it)
    assert batch["image"].shape == (3, 8, 8, 3) and batch["image"].dtype == np.float32
    with train.iterator() as it:  # augmentation is reproducible
        np.testing.assert_array_equal(next(it)["image"], batch["image"])
    with evaluation.iterator() as it:
        first = next(it)
    np.testing.assert_array_equal(first["image"][0], prep(images[0]))
    np.testing.assert_array_equal(first["label"], [0, 1, 2])
    with pytest.raises(KeyError, match="no field 'pixels'"):
        prep.eval_transform("pixels")({"image": images[0]})
