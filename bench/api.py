"""Throughput and latency of `pictaxon serve` under concurrent clients, beside plain `predict` in the same run.

  1. plain predict: serving.predict over the photos in this process (batch 32): images/s
  2. the API: `pictaxon serve` in a subprocess (uvicorn, 127.0.0.1); CLIENTS concurrent clients (httpx, asyncio),
     each POSTing one photo per request until REQUESTS requests are answered: photos/s, latency p50/p95/max,
     and how many answers were not 200.

Every figure comes from one run on one machine; on a shared machine read the ratio, not the absolute numbers.
Usage: .venv/bin/python bench/api.py [--model models/bears.json] [--clients 50] [--requests 400] [--workers 1]
"""
import argparse, asyncio, io, os, socket, statistics, subprocess, sys, time
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1')
ROOT = Path(__file__).resolve().parents[1]
BEARS = ROOT.parent / 'shared' / 'datasets' / 'bears'


def photos(n: int) -> list[tuple[str, bytes]]:
    "The bear photos when ../shared is there, else JPEG crops of scikit-image's samples."
    found = sorted(BEARS.glob('*/*.jpg'))[:n]
    if found: return [(p.name, p.read_bytes()) for p in found]
    import numpy as np
    from PIL import Image
    from skimage import data
    rng, samples, out = np.random.RandomState(0), [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()], []
    for i in range(n):
        pixels = samples[i % len(samples)]
        crop = rng.randint(min(pixels.shape[:2]) // 2, min(pixels.shape[:2]))
        buffer = io.BytesIO()
        Image.fromarray(pixels[:crop, :crop]).resize((400, 300)).save(buffer, 'JPEG', quality=90)
        out.append((f'{i}.jpg', buffer.getvalue()))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


async def load(url, files, clients, requests):
    import httpx
    latencies, failures, queue = [], 0, list(range(requests))

    async def client(http):
        nonlocal failures
        while queue:
            name, content = files[queue.pop() % len(files)]
            started = time.perf_counter()
            answer = await http.post(f'{url}/predict', files=[('photo', (name, content))])
            latencies.append(time.perf_counter() - started)
            failures += answer.status_code != 200

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        await http.post(f'{url}/predict', files=[('photo', files[0])])          # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - started, latencies, failures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default=str(ROOT / 'models' / 'bears.json'))
    parser.add_argument('--clients', type=int, default=50)
    parser.add_argument('--requests', type=int, default=400)
    parser.add_argument('--photos', type=int, default=200)
    parser.add_argument('--workers', type=int, default=1, help='inference threads of the server (default 1)')
    args = parser.parse_args()
    import httpx
    from pictaxon.serving import load_predictor, predict
    files = photos(args.photos)

    predictor = load_predictor(args.model)
    predict(predictor, [files[0][1]])                                   # warm-up
    started = time.perf_counter()
    predict(predictor, [content for _, content in files], batch_size=32)
    plain = len(files) / (time.perf_counter() - started)
    del predictor

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name('pictaxon')), 'serve', args.model, '--port', str(port),
                               '--workers', str(args.workers), '--max-pending', str(max(64, args.clients))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f'http://127.0.0.1:{port}'
    try:
        for _ in range(600):
            try:
                if httpx.get(f'{url}/health', timeout=2).status_code == 200: break
            except httpx.TransportError: time.sleep(0.2)
        engine = httpx.get(f'{url}/health').json()['engine']
        seconds, latencies, failures = asyncio.run(load(url, files, args.clients, args.requests))
    finally:
        server.terminate(); server.wait(10)
    q = statistics.quantiles(latencies, n=100)
    api = args.requests / seconds
    print(f'photos: {len(files)} ({"bears" if BEARS.is_dir() else "scikit-image samples"}), engine {engine}, '
          f'server threads {args.workers}, OMP_NUM_THREADS={os.environ["OMP_NUM_THREADS"]}')
    print(f'plain predict (batch 32, in-process):  {plain:7.1f} photos/s')
    print(f'API, {args.clients} concurrent clients, {args.requests} requests of one photo: {api:7.1f} photos/s '
          f'({api / plain:.2f}x plain); latency p50 {q[49] * 1000:.0f} ms, p95 {q[94] * 1000:.0f} ms, '
          f'max {max(latencies) * 1000:.0f} ms; {failures} answers not 200')


if __name__ == '__main__': main()
