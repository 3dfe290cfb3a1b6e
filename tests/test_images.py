"""Phone formats, PDFs and bounded decoding in pictaxon.images (files are made here, with the libraries that read them)."""
import io, time, tracemalloc
import numpy as np
import pytest
from PIL import Image
from pictaxon.images import (BadImage, describe_non_image, is_pdf, open_image, pdf_pages, reduce_factor, to_rgb)


def encode(image, fmt, **kw) -> bytes:
    buffer = io.BytesIO(); image.save(buffer, fmt, **kw); return buffer.getvalue()


def sideways_exif() -> bytes:
    exif = Image.Exif(); exif[0x0112] = 6          # "rotate 90 degrees clockwise"
    return exif.tobytes()


PHOTO = Image.new('RGB', (64, 48), (120, 80, 40))


@pytest.mark.parametrize('fmt', ['HEIF', 'AVIF'])
def test_phone_formats_open_upright(fmt, tmp_path):
    data = encode(PHOTO, fmt, exif=sideways_exif(), quality=90)
    path = tmp_path / f'photo.{fmt.lower()}'; path.write_bytes(data)
    for source in (data, path):
        image = open_image(source)
        assert image.mode == 'RGB' and image.size == (48, 64)
        assert np.abs(np.asarray(image, dtype=int) - (120, 80, 40)).max() < 12


def test_heic_not_reported_unreadable():
    reason, message = describe_non_image(b'\x00\x00\x00\x18ftypheic\x00\x00')
    assert reason == 'corrupt' and 'damaged' in message
    with pytest.raises(BadImage) as e: open_image(encode(PHOTO, 'HEIF')[:60])
    assert e.value.reason in ('corrupt', 'truncated')


def test_existing_rejections_unchanged():
    jpeg = encode(PHOTO, 'JPEG')
    cases = [(jpeg[:len(jpeg) // 2], 'truncated', 'cut short'), (b'', 'empty', 'empty'),
             (b'<html><body>404</body></html>', 'not_an_image:html', 'web page'),
             (b'just some words', 'not_an_image:text', 'text file')]
    for data, reason, words in cases:
        with pytest.raises(BadImage) as e: open_image(data)
        assert e.value.reason == reason and words in str(e.value)
    with pytest.raises(BadImage, match='at least 100'): open_image(jpeg, min_side=100)
    with pytest.raises(BadImage, match='decompression bomb'): open_image(jpeg, max_pixels=1000)


def test_deep_modes_convert_as_before():
    ramp = (np.arange(96 * 80, dtype=np.uint32).reshape(80, 96) * 8).astype(np.uint16)
    for pixels in (ramp, ramp.astype(np.int32), ramp.astype(np.float32), (ramp // 300).astype(np.int32)):
        image = Image.fromarray(pixels)
        top = 65535.0 if image.mode.startswith('I;16') or pixels.max() > 255 else 255.0
        expected = np.clip(pixels.astype(np.float64) / top * 255.0, 0, 255).astype(np.uint8)
        got = np.asarray(to_rgb(image))
        assert got.shape == (80, 96, 3) and (got[..., 0] == expected).all() and (got[..., 2] == expected).all()
    big_endian = Image.frombytes('I;16B', (4, 1), np.array([0, 256, 65535, 32768], '>u2').tobytes())
    assert np.asarray(to_rgb(big_endian))[0, :, 0].tolist() == [0, 0, 255, 127]


def test_deep_conversion_memory_is_bounded():
    big = Image.fromarray(np.zeros((3000, 3000), dtype=np.uint16))      # a float64 copy would be 69 MB
    tracemalloc.start()
    to_rgb(big)
    peak = tracemalloc.get_traced_memory()[1] / 1024**2
    tracemalloc.stop()
    assert peak < 16, f'{peak:.0f} MB'


def test_palette_transparency_composited_on_white():
    image = Image.new('P', (6, 2), 1)
    image.putpalette([0, 0, 0, 200, 100, 50, 10, 20, 30] + [0] * 759)
    image.paste(2, (3, 0, 6, 2))
    assert to_rgb(image).getpixel((0, 0)) == (200, 100, 50)
    for transparency in (1, bytes([255, 0, 255])):
        decoded = open_image(encode(image, 'PNG', transparency=transparency))
        assert decoded.getpixel((0, 0)) == (255, 255, 255) and decoded.getpixel((5, 1)) == (10, 20, 30)
    half = open_image(encode(image, 'PNG', transparency=bytes([255, 128, 255])))
    assert all(abs(a - b) <= 1 for a, b in zip(half.getpixel((0, 0)), (228, 178, 153)))


@pytest.mark.parametrize('mode', ['RGBA', 'LA', 'PA', 'CMYK', '1', 'L', 'I;16B'])
def test_other_modes_give_rgb(mode):
    image = Image.new(mode, (10, 8))
    fmt = {'CMYK': 'JPEG', 'PA': 'PNG', 'I;16B': 'TIFF'}.get(mode, 'PNG')
    try: data = encode(image, fmt)
    except (OSError, KeyError, ValueError): data = None
    if data is not None: assert open_image(data).mode == 'RGB'
    assert to_rgb(image).mode == 'RGB' and to_rgb(image).size == (10, 8)


def test_transparent_rgba_is_white():
    clear = Image.new('RGBA', (8, 8), (0, 0, 0, 0))
    assert open_image(encode(clear, 'PNG')).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new('RGBA', (8, 8), (0, 0, 0, 128))
    assert abs(open_image(encode(half, 'PNG')).getpixel((0, 0))[0] - 127) <= 1


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG', 'WEBP', 'TIFF', 'AVIF'])
def test_draft_size_keeps_shorter_side(fmt):
    wide = Image.radial_gradient('L').resize((1300, 900)).convert('RGB')
    small = open_image(encode(wide, fmt), draft_size=224)
    assert 224 <= min(small.size) < 2 * 224 and small.mode == 'RGB'
    assert abs(small.width / small.height - 1300 / 900) < 0.02
    assert open_image(encode(wide, fmt), draft_size=900).size == (1300, 900)


def test_draft_of_sixteen_bit_and_rotated():
    deep = Image.fromarray(np.full((1000, 700), 40000, dtype=np.uint16))
    small = open_image(encode(deep, 'PNG'), draft_size=100)
    assert small.size == (100, 143) and small.getpixel((0, 0)) == (155, 155, 155)
    rotated = open_image(encode(Image.new('RGB', (900, 300)), 'PNG', exif=sideways_exif()), draft_size=100)
    assert rotated.size == (100, 300)
    assert reduce_factor((4000, 3000), 280) == 10 and reduce_factor((100, 100), 280) == 1


def test_pdf_pages(tmp_path):
    pages = [Image.new('RGB', (200, 100), (200, 30, 30)), Image.new('RGB', (100, 200), (30, 30, 200))]
    pdf = encode(pages[0], 'PDF', save_all=True, append_images=pages[1:])
    path = tmp_path / 'scan.pdf'; path.write_bytes(pdf)
    assert is_pdf(pdf) and is_pdf(path) and is_pdf(io.BytesIO(pdf))
    assert not is_pdf(encode(PHOTO, 'PNG')) and not is_pdf(tmp_path / 'missing.pdf') and not is_pdf(PHOTO)
    for source in (pdf, path):
        rendered = pdf_pages(source, max_side=300)
        assert [p.size for p in rendered] == [(300, 150), (150, 300)] and all(p.mode == 'RGB' for p in rendered)
        assert np.abs(np.asarray(rendered[0], dtype=int)[75, 150] - (200, 30, 30)).max() < 6
    assert max(pdf_pages(pdf)[0].size) == 800            # tiny pages: at most 4x their size in points
    with pytest.raises(BadImage) as e: open_image(pdf)
    assert e.value.reason == 'not_an_image:pdf'


def test_pdf_limits():
    import pypdfium2 as pdfium
    document = pdfium.PdfDocument.new()
    for _ in range(5000): document.new_page(612, 792)
    buffer = io.BytesIO(); document.save(buffer); document.close()
    start = time.perf_counter()
    with pytest.raises(BadImage) as e: pdf_pages(buffer.getvalue())
    assert time.perf_counter() - start < 2
    assert e.value.reason == 'too_many_pages' and '5,000 pages' in str(e.value) and 'at most 50' in str(e.value)
    with pytest.raises(BadImage) as e: pdf_pages(b'%PDF-1.4\n' + b'\x00' * 100)
    assert e.value.reason == 'corrupt_pdf'
    big = pdfium.PdfDocument.new(); big.new_page(14400, 14400)        # the largest page size PDF allows
    buffer = io.BytesIO(); big.save(buffer); big.close()
    assert pdf_pages(buffer.getvalue(), max_side=500)[0].size == (500, 500)
