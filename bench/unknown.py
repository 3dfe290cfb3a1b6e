"""How well "none of these" works: unrelated photos flagged, in-class photos left alone.

For a quick model of the bears (features: frozen EfficientNet-Lite0, `pictaxon.features.dataset_features`,
the same split as `pictaxon train --quick`), the calibration `pictaxon.unknown.fit_unknown` writes into the card
is fitted on the training photos; then counted:
  - unknowns flagged: scikit-image's sample photos and the houseplants (the photos of other things);
  - in-class validation photos wrongly flagged;
  - "same classes, other source": the validation photos as 64 px thumbnails scaled back up, as grey copies,
    as a 60% centre crop and as a rough JPEG (quality 15); none of them should be flagged.
The same for a model of the houseplants, with the bears as the unknowns. Targets: at least 90% of unknowns
flagged, at most 5% of in-class photos flagged.

    OMP_NUM_THREADS=1 .venv/bin/python bench/unknown.py [--shared ../shared] [--quantile Q] [--margin M]
"""
import argparse, io, os, sys, time
from pathlib import Path
import numpy as np
from PIL import Image, ImageOps

from pictaxon.features import FeatureExtractor, dataset_features, valid_indices
from pictaxon.images import open_image
from pictaxon.unknown import fit_unknown, is_unknown, unknown_scores

SKIMAGE_SAMPLES = ['astronaut', 'brick', 'camera', 'cat', 'checkerboard', 'clock', 'coffee', 'coins', 'colorwheel',
                   'grass', 'gravel', 'horse', 'hubble_deep_field', 'immunohistochemistry', 'logo', 'microaneurysms',
                   'moon', 'page', 'retina', 'rocket', 'text']


def skimage_photos() -> dict:
    "scikit-image's bundled sample images as RGB PIL images (every install has them)."
    from skimage import data
    photos = {}
    for name in SKIMAGE_SAMPLES:
        try: pixels = getattr(data, name)()
        except Exception: continue                                  # a sample that would need a download
        pixels = np.asarray(pixels)
        if pixels.dtype == bool: pixels = pixels.astype(np.uint8) * 255
        if pixels.dtype != np.uint8: pixels = (255 * (pixels - pixels.min()) / max(1e-9, np.ptp(pixels))).astype(np.uint8)
        photos[name] = Image.fromarray(pixels).convert('RGB')
    return photos


def other_source(image: Image.Image) -> dict:
    "Copies of a photo as another source might give it: a thumbnail, grey, a crop, a rough JPEG."
    w, h = image.size
    thumb = image.copy(); thumb.thumbnail((64, 64)); thumb = thumb.resize((w, h), Image.Resampling.BILINEAR)
    buffer = io.BytesIO(); image.save(buffer, 'JPEG', quality=15)
    return {'thumbnail 64 px': thumb, 'greyscale': ImageOps.grayscale(image).convert('RGB'),
            'centre crop 60%': image.crop((int(w * .2), int(h * .2), int(w * .8), int(h * .8))),
            'JPEG quality 15': Image.open(io.BytesIO(buffer.getvalue())).convert('RGB')}


def rate(flags) -> str:
    flags = np.asarray(flags)
    return f'{flags.mean():6.1%} ({int(flags.sum())}/{len(flags)})'


def evaluate(name, fs, unknown_sets: dict, extractor, options) -> list:
    "Rows of the table for one model: its calibration, in-class validation photos and each unknown set."
    valid, _ = valid_indices(fs.files, valid_pct=0.2, seed=42)
    train = np.setdiff1d(np.arange(len(fs)), valid)
    calibration = fit_unknown(fs.features[train], fs.labels[train], fs.classes, **options)
    rows = []
    in_class = is_unknown(calibration, fs.features[valid])
    rows.append((name, 'in-class validation photos', rate(in_class), '<= 5%', in_class.mean() <= 0.05))
    for what, features in unknown_sets.items():
        flags = is_unknown(calibration, features)
        rows.append((name, f'unknowns: {what}', rate(flags), '>= 90%', flags.mean() >= 0.90))
    copies = {}
    for i in valid:
        for kind, image in other_source(open_image(fs.dataset / fs.files[i])).items(): copies.setdefault(kind, []).append(image)
    for kind, images in copies.items():
        flags = is_unknown(calibration, extractor.features(images))
        rows.append((name, f'same classes, other source: {kind}', rate(flags), '(low)', None))
    features = fs.features[valid[:1]]
    start = time.perf_counter()
    for _ in range(1000): is_unknown(calibration, features)
    rows.append((name, 'cost per photo', f'{(time.perf_counter() - start):.3f} ms', '', None))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--shared', default=str(Path(__file__).resolve().parents[2] / 'shared'))
    parser.add_argument('--quantile', type=float, default=None, help='override fit_unknown quantile')
    parser.add_argument('--margin', type=float, default=None, help='override fit_unknown margin')
    args = parser.parse_args()
    options = {k: v for k, v in (('quantile', args.quantile), ('margin', args.margin)) if v is not None}
    bears_dir, plants_dir = Path(args.shared) / 'datasets' / 'bears', Path(args.shared) / 'datasets' / 'houseplants'
    if not bears_dir.is_dir() or not plants_dir.is_dir():
        sys.exit(f'bench/unknown.py needs {bears_dir} and {plants_dir} (the shared photo folders).')
    start = time.time()
    extractor = FeatureExtractor()
    bears = dataset_features(bears_dir, progress=False)
    plants = dataset_features(plants_dir, progress=False)
    samples = skimage_photos()
    sample_features = extractor.features(list(samples.values()))
    rows = evaluate('bears', bears, {f'scikit-image samples': sample_features, 'houseplants': plants.features},
                    extractor, options)
    rows += evaluate('houseplants', plants, {f'scikit-image samples': sample_features, 'bears': bears.features},
                     extractor, options)
    print(f'"None of these" with fit_unknown({", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"}); '
          f'{len(bears)} bears, {len(plants)} houseplants, {len(samples)} scikit-image samples')
    print(f'{"model":<12} {"photos":<44} {"flagged":>18}  {"target":<7} pass')
    for model, what, value, target, ok in rows:
        print(f'{model:<12} {what:<44} {value:>18}  {target:<7} {"" if ok is None else ("yes" if ok else "NO")}')
    print(f'({time.time() - start:.0f} s, measured with other jobs running)')
    return 0 if all(ok for *_, ok in rows if ok is not None) else 1


if __name__ == '__main__':
    sys.exit(main())
