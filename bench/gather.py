"""Benchmark: gather 300 photos from a local server that adds 50 ms of latency to every request.

Prints wall time, images/s, the ratio to the ideal N x latency / workers, and how much verifying,
normalising and de-duplicating add to a bare concurrent download of the same URLs.
Run: .venv/bin/python bench/gather.py [--n 300] [--latency 0.05] [--workers 8]
"""
import argparse, csv, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests'))
from webserver import bear_photos                       # noqa: E402
from pictaxon.gather import download, gather            # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--n', type=int, default=300)
    parser.add_argument('--latency', type=float, default=0.05)
    parser.add_argument('--workers', type=int, default=8)
    parser.add_argument('--bears', default=str(ROOT.parent / 'shared' / 'datasets' / 'bears'))
    args = parser.parse_args()

    photos = list(bear_photos(Path(args.bears)))[: args.n]
    n = len(photos)
    # The server runs in its own process, as the internet would: it must not compete for our GIL.
    server = subprocess.Popen([sys.executable, str(ROOT / 'tests' / 'webserver.py'), args.bears, '--n', str(n),
                               '--latency', str(args.latency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    base = server.stdout.readline().strip()
    with tempfile.TemporaryDirectory() as tmp:
        urls = [(name.split('-')[0], f'{base}/photo/{name}') for name in photos]
        urls_file = Path(tmp) / 'urls.csv'
        with open(urls_file, 'w', newline='') as f:
            csv.writer(f).writerows([('class', 'url'), *urls])

        # Baseline: the same URLs fetched by the same download function in a pool of the same size.
        start = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool: list(pool.map(lambda u: download(u[1], allow_private=True), urls))
        download_only = time.perf_counter() - start

        start = time.perf_counter()
        report = gather(Path(tmp) / 'dataset', urls_file=urls_file, workers=args.workers, progress=False,
                        allow_private=True)   # the bench's "internet" is a server on 127.0.0.1
        full = time.perf_counter() - start
    server.stdin.close(); server.wait(timeout=10)

    kept = sum(c['kept'] for c in report.counts.values())
    ideal = n * args.latency / args.workers
    print(f'photos: {n} (kept {kept}), latency {args.latency*1000:.0f} ms, workers {args.workers}')
    print(f'ideal N x latency / workers:         {ideal:6.2f} s')
    print(f'bare concurrent download:            {download_only:6.2f} s  ({download_only/ideal:.2f}x ideal)')
    print(f'gather (download+verify+normalise+dedupe): {full:6.2f} s  ({n/full:.0f} images/s)')
    print(f'ratio gather / ideal:                {full/ideal:6.2f}x   (target <= 1.5x)')
    print(f'processing overhead vs bare download: {100*(full-download_only)/download_only:+5.1f}%  (target < 30%)')


if __name__ == '__main__':
    main()
