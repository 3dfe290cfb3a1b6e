"""Speed of the clean stage on the shared bears (414 photos), printed as ratios.

  1. inspecting every photo (sha256, perceptual hash, size, sharpness, brightness), as `review` does, vs the
     bare minimum a duplicate check needs (PIL decode + imagehash.phash).           target: ours <= 1.5x bare
  2. a second `review` of the same folder in the same session (cached) vs the first.  target: <= 0.1x
  3. the safe path: apply then undo of 200 moves (logged, manifest-free folder), moves/s, vs plain os.rename
     of the same files there and back.                                             reported, no target

Usage: .venv/bin/python bench/clean.py
"""
import shutil, sys, tempfile, time
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
        start = time.perf_counter()
        clean.review(dataset)
        first = time.perf_counter() - start
        start = time.perf_counter()
        clean.review(dataset)
        second = time.perf_counter() - start
        print(f'1. inspect {len(photos)} photos: review {first:.2f} s, bare decode+phash {bare:.2f} s, '
              f'ratio {first / bare:.2f}x (target <= 1.5x)')
        print(f'2. second review (cached): {second:.3f} s, ratio {second / first:.3f}x (target <= 0.1x)')

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
