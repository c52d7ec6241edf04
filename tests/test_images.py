"""load_image: every awkward or broken file gives either the picture a person sees or one
ImageDecodeError with the path and a short reason. All files are generated in tmp_path."""

from __future__ import annotations

import io
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from wastenet.data.images import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    iter_image_files,
    load_image,
)
from wastenet.errors import ConfigError, WastenetError

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


# ----------------------------------------------------------------------------- helpers


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def pixels(source, **kw) -> np.ndarray:
    img = load_image(source, **kw)
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def noise_jpeg(w: int = 96, h: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), "JPEG")


def decode_error(source, **kw) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as info:
        load_image(source, **kw)
    return info.value


def png_1bit(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG, built by hand: huge dimensions, a few KB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    body = []
    for start in range(0, height, 1000):
        body.append(z.compress(row * min(1000, height - start)))
    body.append(z.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(body))
        + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------- ordinary images


def test_rgb_jpeg_is_fully_loaded_and_independent_of_the_file(tmp_path):
    path = write(tmp_path / "a.jpg", encode(Image.new("RGB", (30, 20), RED), "JPEG", quality=95))
    img = load_image(path)
    path.unlink()  # pixels must already be in memory
    assert img.mode == "RGB" and img.size == (30, 20)
    assert np.abs(np.asarray(img).astype(int) - RED).max() <= 3


def test_one_by_one_pixel_image(tmp_path):
    path = write(tmp_path / "dot.png", encode(Image.new("RGB", (1, 1), BLUE), "PNG"))
    out = pixels(path)
    assert out.shape == (1, 1, 3) and tuple(out[0, 0]) == BLUE


@pytest.mark.parametrize(
    "suffix, fmt, kw",
    [(".webp", "WEBP", {"lossless": True}), (".bmp", "BMP", {}), (".tif", "TIFF", {}),
     (".tiff", "TIFF", {"compression": "tiff_lzw"})],
)  # fmt: skip
def test_webp_bmp_tiff(tmp_path, suffix, fmt, kw):
    img = Image.new("RGB", (6, 4), RED)
    img.paste(GREEN, (3, 0, 6, 4))
    out = pixels(write(tmp_path / f"x{suffix}", encode(img, fmt, **kw)))
    assert out.shape == (4, 6, 3)
    assert tuple(out[0, 0]) == RED and tuple(out[0, 5]) == GREEN


@pytest.mark.parametrize("mode, value, expected", [("L", 77, (77, 77, 77)), ("1", 1, WHITE)])
def test_greyscale_and_bilevel_become_rgb(tmp_path, mode, value, expected):
    path = write(tmp_path / "g.png", encode(Image.new(mode, (5, 5), value), "PNG"))
    assert tuple(pixels(path)[2, 2]) == expected


# ------------------------------------------------------------------------ colour modes


def test_rgba_transparent_pixels_are_white_not_their_hidden_colour(tmp_path):
    img = Image.new("RGBA", (4, 2), (0, 0, 0, 0))  # fully transparent, hidden colour black
    img.putpixel((2, 0), (255, 0, 0, 255))  # opaque red
    img.putpixel((3, 0), (0, 0, 0, 128))  # half-transparent black
    path = write(tmp_path / "t.png", encode(img, "PNG"))
    assert tuple(np.asarray(Image.open(path).convert("RGB"))[0, 0]) == BLACK  # the trap
    out = pixels(path)
    assert tuple(out[0, 0]) == WHITE and tuple(out[1, 1]) == WHITE
    assert tuple(out[0, 2]) == RED
    assert np.all(np.abs(out[0, 3] - 127) <= 1)  # black at 50 % over white = mid grey


def test_la_greyscale_with_alpha(tmp_path):
    img = Image.new("LA", (2, 1), (0, 0))  # transparent black
    img.putpixel((1, 0), (50, 255))  # opaque dark grey
    path = write(tmp_path / "la.png", encode(img, "PNG"))
    assert Image.open(path).mode == "LA"
    out = pixels(path)
    assert tuple(out[0, 0]) == WHITE and tuple(out[0, 1]) == (50, 50, 50)


def test_palette_png_with_transparent_index(tmp_path):
    img = Image.new("P", (2, 1), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 black, index 1 green
    img.putpixel((1, 0), 1)
    path = write(tmp_path / "p.png", encode(img, "PNG", transparency=0))
    assert Image.open(path).mode == "P"
    out = pixels(path)
    assert tuple(out[0, 0]) == WHITE and tuple(out[0, 1]) == GREEN


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    path = write(tmp_path / "deep.png", encode(Image.fromarray(values), "PNG"))
    assert Image.open(path).mode.startswith("I;16")  # really 16-bit on disk
    out = pixels(path)[0, :, 0]
    assert out[0] == 0 and out[-1] == 255
    assert abs(out[1] - 64) <= 1 and abs(out[2] - 128) <= 1  # proportional, not all white


def test_cmyk_jpeg_becomes_the_right_rgb(tmp_path):
    cmyk_red = (0, 255, 255, 0)  # no cyan, full magenta + yellow, no black
    path = write(tmp_path / "c.jpg", encode(Image.new("CMYK", (8, 8), cmyk_red), "JPEG"))
    assert Image.open(path).mode == "CMYK"
    assert np.abs(pixels(path)[4, 4] - RED).max() <= 12


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (5, 5), RED), Image.new("RGB", (5, 5), BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 2
    assert tuple(pixels(path)[2, 2]) == RED


def test_exif_orientation_6_is_applied(tmp_path):
    # Stored 40 wide x 20 high with a red block in the top-left corner; orientation 6
    # means "rotate 90 degrees clockwise to display": 20 x 40, block in the top-right.
    stored = Image.new("RGB", (40, 20), WHITE)
    stored.paste(RED, (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = write(tmp_path / "phone.jpg", encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    img = load_image(path)
    assert img.size == (20, 40)
    out = np.asarray(img).astype(int)
    assert np.abs(out[3, 16] - RED).max() <= 20  # top-right: red
    assert np.abs(out[3, 3] - WHITE).max() <= 20  # top-left: white
    assert np.abs(out[36, 16] - WHITE).max() <= 20  # bottom-right: white


# --------------------------------------------------------------------- broken files


def test_zero_byte_file(tmp_path):
    path = write(tmp_path / "empty.jpg", b"")
    err = decode_error(path)
    assert (err.path, err.reason) == (str(path), "empty file")


def test_text_file_named_jpg(tmp_path):
    path = write(tmp_path / "notes.jpg", b"this is not a picture\n")
    assert decode_error(path).reason == "not an image"


def test_truncated_jpeg_fails_instead_of_loading_grey(tmp_path):
    data = noise_jpeg()
    path = write(tmp_path / "cut.jpg", data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    err = decode_error(path)
    assert (err.path, err.reason) == (str(path), "truncated JPEG")


def test_png_with_garbage_after_the_header(tmp_path):
    data = bytearray(encode(Image.new("RGB", (16, 16), GREEN), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start : start + 12] = b"garbage!" * 1 + b"\x00\xff\x00\xff"
    err = decode_error(write(tmp_path / "bad.png", bytes(data)))
    assert err.reason.startswith("corrupt PNG: ")


def test_png_with_bad_header_crc(tmp_path):
    data = bytearray(encode(Image.new("RGB", (16, 16), GREEN), "PNG"))
    data[29] ^= 0xFF  # last byte of the IHDR CRC
    assert decode_error(bytes(data)).reason == "corrupt PNG header"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    err = decode_error(path)
    assert (err.path, err.reason) == (str(path), "file not found")


def test_folder_is_not_an_image(tmp_path):
    assert decode_error(tmp_path).reason == "is a folder, not a file"


def test_error_is_a_wastenet_error_with_exit_status_1(tmp_path):
    err = decode_error(write(tmp_path / "e.png", b""))
    assert isinstance(err, WastenetError) and not isinstance(err, ConfigError)
    assert err.exit_code == 1
    assert str(err) == f"{tmp_path / 'e.png'}: empty file"


# ---------------------------------------------------------------------- huge images


def test_max_pixels_is_checked_before_any_pixel_is_decoded(tmp_path, monkeypatch):
    path = write(tmp_path / "small.png", encode(Image.new("RGB", (40, 30), RED), "PNG"))
    loads = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(1) or original(self))
    err = decode_error(path, max_pixels=1000)
    assert err.reason == "too large: 1200 pixels (limit 1000)"
    assert loads == []
    assert load_image(path, max_pixels=1200).size == (40, 30)  # the limit is inclusive
    assert loads  # and decoded once allowed


def test_20000_square_bilevel_png_is_refused_by_the_default_limit(tmp_path):
    data = png_1bit(20000, 20000)  # 400 megapixels, about 50 KB on disk
    assert len(data) < 200_000
    path = write(tmp_path / "bomb.png", data)
    limit_before = Image.MAX_IMAGE_PIXELS
    err = decode_error(path)
    assert err.reason == "too large: 400000000 pixels (limit 89478485)"
    assert Image.MAX_IMAGE_PIXELS == limit_before  # no global change


def test_image_just_over_the_limit_errors_without_leaking_pillows_warning():
    # 10000 x 10000 sits between Pillow's warning and error thresholds.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = decode_error(png_1bit(10000, 10000))
    assert err.reason == "too large: 100000000 pixels (limit 89478485)"
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_concurrent_decoding_threads_leave_warning_filters_as_they_were(monkeypatch):
    # Dataset caching decodes in threads; the scoped warning filter must not leak.
    # A slow header parse widens the window in which unsynchronised threads would race.
    original_open = Image.open

    def slow_open(*args, **kwargs):
        time.sleep(0.002)
        return original_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", slow_open)
    bomb = png_1bit(10000, 10000)
    good = encode(Image.new("RGB", (8, 8), GREEN), "PNG")
    before = list(warnings.filters)
    results: list[str] = []

    def work():
        for _ in range(10):
            results.append(decode_error(bomb).reason[:9])
            results.append(str(load_image(good).size))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(results)) == ["(8, 8)", "too large"] and len(results) == 80
    assert warnings.filters == before


# ------------------------------------------------------------------ kinds of source


def test_unicode_file_name(tmp_path):
    path = write(tmp_path / "flasche_ü_瓶.jpg", encode(Image.new("RGB", (3, 3), GREEN), "JPEG"))
    assert load_image(path).size == (3, 3)
    missing = tmp_path / "dose_ä_罐.png"
    assert decode_error(str(missing)).path == str(missing)


def test_bytes_file_object_and_path_give_the_same_pixels(tmp_path):
    data = encode(Image.new("RGB", (4, 4), BLUE), "PNG")
    path = write(tmp_path / "b.png", data)
    from_path = pixels(path)
    assert np.array_equal(pixels(data), from_path)
    assert np.array_equal(pixels(bytearray(data)), from_path)
    assert np.array_equal(pixels(io.BytesIO(data)), from_path)
    with open(path, "rb") as fh:
        assert np.array_equal(pixels(fh), from_path)


def test_errors_from_bytes_and_file_objects_name_what_they_can(tmp_path):
    assert decode_error(b"").path is None
    assert decode_error(b"plain text").reason == "not an image"
    path = write(tmp_path / "x.jpg", b"plain text")
    with open(path, "rb") as fh:
        assert decode_error(fh).path == str(path)
    with open(path) as fh:  # text mode: a usage slip, still one clear error
        assert decode_error(fh).reason == "file object must be opened in binary mode"


# --------------------------------------------------------------------- folder scans


def test_iter_image_files_is_sorted_recursive_case_insensitive_and_skips_hidden(tmp_path):
    root = tmp_path / ".cache" / "ds"  # a hidden folder *above* the root is fine
    files = [
        "glass/b.JPG", "glass/a.png", "paper/deep/er/c.webp", "paper/d.TIFF", "z.gif",
        "paper/.hidden.jpg", ".git/e.jpg", "glass/notes.txt", "glass/f.jpeg.bak",
    ]  # fmt: skip
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "folder.png").mkdir()  # a folder with an image suffix is not a file
    found = [p.relative_to(root).as_posix() for p in iter_image_files(root)]
    assert found == ["glass/a.png", "glass/b.JPG", "paper/d.TIFF", "paper/deep/er/c.webp", "z.gif"]
    assert set(IMAGE_EXTENSIONS) >= {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".gif"}


def test_iter_image_files_on_a_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="image folder not found"):
        iter_image_files(tmp_path / "missing")


# --------------------------------------------------------------------------- only what we document


@pytest.mark.parametrize("fmt", ["XBM", "PPM", "PCX", "ICO", "TGA"])
def test_formats_outside_the_documented_list_are_refused(fmt):
    buf = io.BytesIO()
    Image.new("1" if fmt == "XBM" else "RGB", (16, 16)).save(buf, fmt)
    with Image.open(io.BytesIO(buf.getvalue())) as probe:  # Pillow itself would read it
        assert probe.format == fmt
    assert decode_error(buf.getvalue()).reason == "not an image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_every_documented_format_still_decodes(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 200, 30)).save(buf, fmt)
    assert load_image(buf.getvalue()).size == (16, 12)


def test_a_fifo_or_a_device_is_refused_without_reading_it(tmp_path):
    import os

    fifo = tmp_path / "camera.jpg"
    os.mkfifo(fifo)  # reading it would block forever: nobody writes
    assert decode_error(fifo).reason == "not a regular file"
    if Path("/dev/zero").exists():
        assert decode_error("/dev/zero").reason == "not a regular file"  # would never end


def test_a_large_jpeg_is_decoded_at_reduced_scale_when_asked(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (4200, 2600), (120, 90, 60)).save(buf, "JPEG", quality=50)
    data = buf.getvalue()
    assert load_image(data).size == (4200, 2600)             # training and predict: full size
    small = load_image(data, draft_size=1024)
    assert small.size == (2100, 1300) and small.mode == "RGB"  # 1/2: still >= 1024 on both sides
    png = io.BytesIO()
    Image.new("RGB", (2100, 1300)).save(png, "PNG")
    assert load_image(png.getvalue(), draft_size=256).size == (2100, 1300)  # only JPEG has a draft mode


def test_the_service_pixel_limit_is_lower_than_predicts():
    from wastenet.data.images import DEFAULT_MAX_PIXELS, SERVICE_MAX_PIXELS

    assert SERVICE_MAX_PIXELS < DEFAULT_MAX_PIXELS
