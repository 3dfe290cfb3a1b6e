"""Bulk prediction: plain `predict` in one process vs the Ray Data path (`pictaxon.scale.predict_bulk`) on this
machine, and what Ray costs per image.

  1. plain predict: serving.predict over N photo paths, one process, one thread: photos/s
  2. Ray start-up: a local Ray (num_cpus=2, small object store, no dashboard) started and connected: s
  3. fixed cost of a run: predict_bulk on 8 photos (actor start, model load, first part written): s
  4. Ray with 1 actor on N photos: photos/s, and Ray's cost per photo beyond plain predict, with the fixed cost
     spread over the N photos ((run - N / plain rate) / N) and without it ((run - fixed cost - N / plain rate) / N)
  5. Ray with 2 actors on N photos: photos/s and the speed-up over plain predict

The photos: the bears when ../shared is there plus crops of scikit-image's samples, and a few bad files (the same
archive as tests/test_scale.py). Every figure comes from one run; on a shared machine read ratios, not absolutes.
Usage: .venv/bin/python bench/scale.py [--photos 1000] [--model models/bears.json]
"""
import argparse, os, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1')
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests'))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default=str(ROOT / 'models' / 'bears.json'))
    parser.add_argument('--photos', type=int, default=1000)
    parser.add_argument('--batch-size', type=int, default=32)
    args = parser.parse_args()
    from test_scale import make_archive
    from pictaxon.scale import list_sources, predict_bulk, ray_session
    from pictaxon.serving import load_predictor, predict

    work = Path(tempfile.mkdtemp(prefix='bench-scale-'))
    folder, bad = make_archive(work / 'photos', n=args.photos)
    sources = list_sources(folder)
    n = len(sources)

    predictor = load_predictor(args.model)
    predict(predictor, sources[:4])                                       # warm-up
    started = time.perf_counter()
    predict(predictor, sources, batch_size=args.batch_size)
    plain = n / (time.perf_counter() - started)
    del predictor

    started = time.perf_counter()
    with ray_session(num_cpus=2):
        ray_start = time.perf_counter() - started
        tiny = work / 'tiny'
        tiny.mkdir()
        for s in sources[:8]: (tiny / Path(s).name).symlink_to(s)
        started = time.perf_counter()
        predict_bulk(args.model, tiny, work / 'out-tiny', batch_size=args.batch_size, concurrency=1)
        fixed = time.perf_counter() - started
        runs = {}
        for actors in (1, 2):
            started = time.perf_counter()
            report = predict_bulk(args.model, folder, work / f'out-{actors}', batch_size=args.batch_size,
                                  concurrency=actors, part_rows=500)
            runs[actors] = time.perf_counter() - started
            assert report.classified == n and report.errors == len(bad), report.summary()

    whole = (runs[1] - n / plain) / n              # Ray's cost per photo, its fixed cost included (start-up excluded)
    overhead = (runs[1] - fixed - n / plain) / n   # the same beyond the fixed cost: per-photo cost of Ray Data itself
    print(f'{n} photos ({len(bad)} bad), batch {args.batch_size}, OMP_NUM_THREADS={os.environ["OMP_NUM_THREADS"]}, '
          f'{os.cpu_count()} cores')
    print(f'plain predict, 1 process:          {plain:6.1f} photos/s')
    print(f'Ray start-up (local, 2 CPUs):      {ray_start:6.1f} s')
    print(f'fixed cost of a Ray run (8 photos): {fixed:5.1f} s  (actors start, model loads, a part is written)')
    print(f'Ray, 1 actor:                      {n / runs[1]:6.1f} photos/s  ({runs[1]:.1f} s against {n / plain:.1f} s plain)')
    print(f'  Ray\'s cost per photo beyond plain predict: {whole * 1000:.1f} ms with the fixed cost spread over {n} photos, '
          f'{overhead * 1000:.1f} ms without it ({overhead * plain:+.0%} of a photo\'s plain time; under 0 = within noise)')
    print(f'Ray, 2 actors:                     {n / runs[2]:6.1f} photos/s  ({runs[2]:.1f} s; {n / runs[2] / plain:.2f}x plain)')


if __name__ == '__main__': main()
