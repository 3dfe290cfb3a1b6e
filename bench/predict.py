"""Prediction speed and memory of the default model on every engine, printed as ratios measured in one run.

  1. one photo:   median latency of `pictaxon.serving.predict` with ONNX Runtime (the serving engine), with the
                  portable .pt (torch, no fastai) and with the fastai learner, against a bare torch baseline
                  (PIL decode + resize + normalise + model(x), same network, same photo) and fastai's
                  learn.predict.                                                   target: ONNX <= 1.2x bare torch
  2. 200 photos:  images/s of predict on each engine against a plain torch loop at the same batch size.
  3. a fresh process that loads the model and predicts one photo, per engine: peak resident memory (VmHWM),
     private memory after the prediction (psutil USS), time to the first label, whether torch/fastai were
     imported; then the same process inside ../shared/tools/binder-box (2 GB, one CPU): its peak and OOM kills.

Timings on a shared machine are inflated by whatever else runs; the ratios are measured side by side.
Usage: .venv/bin/python bench/predict.py [--model models/bears.json] [--runs 30] [--threads 1] [--no-box]
"""
import argparse, itertools, json, os, shutil, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEARS = ROOT.parent / 'shared' / 'datasets' / 'bears'
BOX = ROOT.parent / 'shared' / 'tools' / 'binder-box'
ENGINES = ('onnx', 'torch', 'fastai')


def child(args):
    """Part 3, in a fresh process: load with one engine, predict one photo, report memory and time."""
    start = time.perf_counter()
    from pictaxon.serving import load_predictor, predict
    predictor = load_predictor(args.model, engine=args.memory_only, threads=args.threads)
    label = predict(predictor, [sorted(BEARS.glob('*/*.jpg'))[0]])[0].label
    seconds = time.perf_counter() - start
    import psutil
    private = psutil.Process().memory_full_info().uss
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so it would report the parent's peak.
    peak_kb = int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1])
    print(json.dumps({'engine': predictor.engine, 'label': label, 'peak_mb': peak_kb / 1024,
                      'private_mb': private / 1024**2, 'seconds': seconds,
                      'torch': 'torch' in sys.modules, 'fastai': 'fastai' in sys.modules}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default=str(ROOT / 'models' / 'bears.json'))
    parser.add_argument('--runs', type=int, default=30)
    parser.add_argument('--folder-size', type=int, default=200)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--threads', type=int, default=1,
                        help='threads for every contender (default 1: steady numbers on shared cores)')
    parser.add_argument('--no-box', action='store_true', help='skip the binder-box runs of part 3')
    parser.add_argument('--memory-only', choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not BEARS.is_dir(): sys.exit(f'bench/predict.py needs the bear photos at {BEARS}.')
    if args.memory_only: return child(args)

    import numpy as np, torch
    from PIL import Image
    torch.set_num_threads(args.threads)
    from pictaxon.serving import load_predictor, predict
    engines = {e: load_predictor(args.model, engine=e, threads=args.threads) for e in ENGINES}
    learner = engines['fastai'].learner
    net = learner.model.eval()
    transforms = engines['onnx'].card['transforms']
    size = transforms['size']
    mean, std = (torch.tensor(transforms[k]).view(1, 3, 1, 1) for k in ('mean', 'std'))

    def bare_tensor(path):
        image = Image.open(path).convert('RGB')
        scale = size / min(image.size)
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        image = image.crop((left, top, left + size, top + size))
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)

    def bare(paths):
        x = torch.stack([bare_tensor(p) for p in paths]).float().div_(255)
        with torch.inference_mode():
            return torch.softmax(net((x - mean) / std), dim=1)

    def median_seconds(fn, runs):
        fn()                                   # warm-up
        times = []
        for _ in range(runs):
            start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
        return statistics.median(times)

    photos = sorted(BEARS.glob('*/*.jpg'))
    one = photos[0]
    load = os.getloadavg()[0]
    print(f'model {args.model} ({", ".join(engines["onnx"].classes)}), input {size} px, {args.threads} thread(s); '
          f'load average {load:.1f} on {os.cpu_count()} CPUs (other jobs running inflate every timing)')
    print(f'\n1. one photo ({one.relative_to(BEARS)}), median of {args.runs} runs')
    contenders = {'bare torch': lambda: bare([one]),
                  'predict, ONNX Runtime': lambda: predict(engines['onnx'], one),
                  'predict, portable .pt': lambda: predict(engines['torch'], one),
                  'predict, fastai learner': lambda: predict(engines['fastai'], one),
                  'fastai learn.predict': lambda: learner.predict(one)}
    seconds = {}
    for name, fn in contenders.items():
        with learner.no_bar() if name == 'fastai learn.predict' else _nothing():
            seconds[name] = median_seconds(fn, args.runs)
    for name, s in seconds.items():
        print(f'   {name:<26}{s * 1000:8.1f} ms   {s / seconds["bare torch"]:5.2f}x bare torch')
    onnx_s = seconds['predict, ONNX Runtime']
    print(f'   -> ONNX / bare torch = {onnx_s / seconds["bare torch"]:.2f}x (target <= 1.2x); '
          f'portable .pt / ONNX = {seconds["predict, portable .pt"] / onnx_s:.1f}x; '
          f'learn.predict / ONNX = {seconds["fastai learn.predict"] / onnx_s:.1f}x')

    folder = list(itertools.islice(itertools.cycle(photos), args.folder_size))
    print(f'\n2. {len(folder)} photos, batch size {args.batch_size}')
    def plain_loop():
        return [bare(folder[i:i + args.batch_size]) for i in range(0, len(folder), args.batch_size)]
    rates = {}
    for name, fn in [('plain torch loop', plain_loop)] + [
            (f'predict, {e}', lambda e=e: predict(engines[e], folder, batch_size=args.batch_size)) for e in ENGINES]:
        bare(folder[:args.batch_size]) if name == 'plain torch loop' else predict(engines[name.split(', ')[1]], folder[:args.batch_size])  # warm-up
        start = time.perf_counter(); fn(); rates[name] = len(folder) / (time.perf_counter() - start)
        print(f'   {name:<26}{rates[name]:8.1f} images/s   {rates[name] / rates["plain torch loop"]:5.2f}x plain torch')
    print(f'   -> ONNX / plain torch = {rates["predict, onnx"] / rates["plain torch loop"]:.2f}x; '
          f'ONNX / portable .pt = {rates["predict, onnx"] / rates["predict, torch"]:.2f}x')

    print('\n3. a fresh process: load the model with one engine, predict one photo')
    fresh, boxed = {}, {}
    for engine in ENGINES:
        command = [sys.executable, __file__, '--memory-only', engine, '--model', args.model, '--threads', str(args.threads)]
        out = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
        fresh[engine] = json.loads(out.stdout.strip().splitlines()[-1])
        f = fresh[engine]
        print(f'   {engine:<7} peak {f["peak_mb"]:6.0f} MB, private {f["private_mb"]:6.0f} MB, first label in '
              f'{f["seconds"]:5.2f} s ({f["label"]}); imports torch: {f["torch"]}, fastai: {f["fastai"]}')
        if not args.no_box and BOX.exists() and os.geteuid() == 0:
            run = subprocess.run([sys.executable, str(BOX), '--', *command], capture_output=True, text=True,
                                 env={**os.environ, 'OMP_NUM_THREADS': '1'})
            boxed[engine] = (run.stdout + run.stderr).strip().splitlines()[-1]
            print(f'           binder-box (2 GB, 1 CPU): {boxed[engine]}')
    print(f'   -> peak: torch engine / ONNX = {fresh["torch"]["peak_mb"] / fresh["onnx"]["peak_mb"]:.1f}x, '
          f'fastai / ONNX = {fresh["fastai"]["peak_mb"] / fresh["onnx"]["peak_mb"]:.1f}x; first label: '
          f'torch / ONNX = {fresh["torch"]["seconds"] / fresh["onnx"]["seconds"]:.1f}x, '
          f'fastai / ONNX = {fresh["fastai"]["seconds"] / fresh["onnx"]["seconds"]:.1f}x')

    results = {'load_average': round(load, 1), 'threads': args.threads,
               'single_ms': {k: round(v * 1000, 2) for k, v in seconds.items()},
               'onnx_over_bare_torch': round(onnx_s / seconds['bare torch'], 3),
               'folder_images_per_s': {k: round(v, 2) for k, v in rates.items()},
               'fresh_process': {e: {k: (round(v, 2) if isinstance(v, float) else v) for k, v in f.items()}
                                 for e, f in fresh.items()},
               'binder_box': boxed}
    out_dir = ROOT / 'bench' / 'out'
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / 'predict.json').write_text(json.dumps(results, indent=2) + '\n')
    print(f'\nwrote {out_dir / "predict.json"}')


class _nothing:
    def __enter__(self): return self
    def __exit__(self, *exc): return False


if __name__ == '__main__':
    main()
