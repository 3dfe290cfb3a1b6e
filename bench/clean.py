"""Speed of the clean stage on the shared bears (414 photos), printed as ratios.

  1. inspecting every photo (sha256, perceptual hash, size, sharpness, brightness, contrast), as `review` does,
     vs the bare minimum a duplicate check needs (PIL decode + imagehash.phash).    target: ours <= 1.5x bare
  2. a whole `review` (out-of-fold judgement included) with no feature cache, then again in a fresh session's
     state with the features cached on disk and the inspection cached in memory.  target: second <= 0.3x first
  3. the safe path: apply then undo of 200 moves (logged, manifest-free folder), moves/s, vs plain os.rename
     of the same files there and back.                                             reported, no target

Usage: .venv/bin/python bench/clean.py
"""
import os, shutil, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEARS = ROOT.parent / 'shared' / 'datasets' / 'bears'


def main():
    import imagehash
    from PIL import Image
    from pictaxon import clean
    photos = sorted(BEARS.glob('*/*.jpg'))
    work = Path(tempfile.mkdtemp(prefix='pictaxon-bench-clean-'))
    try:
        dataset = work / 'bears'
        shutil.copytree(BEARS, dataset, ignore=shutil.ignore_patterns('*.csv'))

        start = time.perf_counter()
        for p in photos:
            with Image.open(p) as im: imagehash.phash(im.convert('RGB'))
        bare = time.perf_counter() - start
        from pictaxon import features, review
        start = time.perf_counter()
        review.inspect_images(dataset)
        inspect = time.perf_counter() - start
        print(f'1. inspect {len(photos)} photos: {inspect:.2f} s, bare decode+phash {bare:.2f} s, '
              f'ratio {inspect / bare:.2f}x (target <= 1.5x)')
        # A cold feature cache (the extractor itself copied over: building it is a once-per-machine cost).
        cache = work / 'cache'
        cold = cache / features.extractor_path().name
        cache.mkdir(); shutil.copy(features.extractor_path(), cold)
        os.environ['PICTAXON_CACHE'] = str(cache)
        review._INSPECTED.clear()
        start = time.perf_counter()
        review.review(dataset)
        first = time.perf_counter() - start
        review._INSPECTED.clear()
        start = time.perf_counter()
        result = review.review(dataset)
        second = time.perf_counter() - start
        print(f'2. whole review, features not cached: {first:.1f} s; again with the features cached: {second:.1f} s, '
              f'ratio {second / first:.2f}x (target <= 0.3x; {result.source})')

        moved = sorted((dataset / 'black').glob('*.jpg'))[:100] + sorted((dataset / 'teddy').glob('*.jpg'))[:100]
        decisions = [(p.relative_to(dataset).as_posix(), 'delete') for p in moved]
        from pictaxon.moves import apply_decisions, undo     # the safe path lives in pictaxon.moves
        start = time.perf_counter()
        apply_decisions(dataset, decisions)
        undo(dataset)
        safe = time.perf_counter() - start
        start = time.perf_counter()
        aside = work / 'aside'; aside.mkdir()
        for p in moved: p.rename(aside / f'{p.parent.name}-{p.name}')
        for p in moved: (aside / f'{p.parent.name}-{p.name}').rename(p)
        plain = time.perf_counter() - start
        print(f'3. apply + undo of {len(moved)} moves: {2 * len(moved) / safe:.0f} moves/s '
              f'(plain rename {2 * len(moved) / plain:.0f} moves/s; the safe path hashes, logs and plans each move)')
    finally:
        shutil.rmtree(work)


if __name__ == '__main__':
    sys.exit(main())
