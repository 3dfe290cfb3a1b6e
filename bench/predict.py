"""Prediction speed and memory of the default model, printed as ratios (targets from issue 3).

  1. one photo:   pictaxon.export.predict  vs  a bare torch baseline (PIL decode + resize + normalise +
                  model(x), same model, same photo)  vs  fastai's learn.predict.     target: ours <= 1.2x bare
  2. 200 photos:  images/s of predict  vs  a plain torch loop at the same batch size. target: >= 0.85x
  3. peak memory of a fresh process that loads the default model and predicts one photo.  target: < 700 MB

Usage: .venv/bin/python bench/predict.py [--model models/bears.pkl] [--runs 30] [--threads 1]
"""
import argparse, itertools, json, os, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEARS = ROOT.parent / 'shared' / 'datasets' / 'bears'


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default=str(ROOT / 'models' / 'bears.pkl'))
    parser.add_argument('--runs', type=int, default=30)
    parser.add_argument('--folder-size', type=int, default=200)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads for every contender (default 1: steady numbers on shared cores)')
    parser.add_argument('--memory-only', choices=['portable', 'learner'], help=argparse.SUPPRESS)
    args = parser.parse_args()

    import numpy as np, torch
    from PIL import Image
    torch.set_num_threads(args.threads)
    from pictaxon.export import load_model, load_predictor, predict

    photos = sorted(BEARS.glob('*/*.jpg'))
    one = photos[0]
    if args.memory_only:                      # the child process of part 3
        model = (load_predictor if args.memory_only == 'portable' else load_model)(args.model)
        label = predict(model, one)[0].label
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so it would report the parent's peak.
        peak_kb = int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1])
        print(json.dumps({'label': label, 'peak_mb': peak_kb / 1024}))
        return

    model = load_model(args.model)
    portable = load_predictor(args.model)     # the .pt beside it: what the app and `pictaxon predict` use
    learner = model.learner
    net = learner.model.eval()
    size = int(model.card.get('input_size', 224))
    normalise = next(t for t in learner.dls.valid.after_batch.fs if type(t).__name__ == 'Normalize')
    mean, std = normalise.mean.view(1, 3, 1, 1).float(), normalise.std.view(1, 3, 1, 1).float()

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

    print(f'model {args.model} ({", ".join(model.classes)}), input {size} px, torch threads {args.threads}')
    print(f'\n1. one photo ({one.relative_to(BEARS)}), median of {args.runs} runs')
    contenders = {'bare torch': lambda: bare([one]), 'pictaxon predict': lambda: predict(model, one),
                  'predict, portable copy': lambda: predict(portable, one),
                  'fastai learn.predict': lambda: learner.predict(one)}
    seconds = {}
    for name, fn in contenders.items():
        with learner.no_bar() if 'fastai' in name else _nothing():
            seconds[name] = median_seconds(fn, args.runs)
    for name, s in seconds.items():
        print(f'   {name:<22}{s * 1000:8.1f} ms   {s / seconds["bare torch"]:5.2f}x bare')
    print(f'   -> predict / bare = {seconds["pictaxon predict"] / seconds["bare torch"]:.2f}x (target <= 1.2x); '
          f'portable copy / bare = {seconds["predict, portable copy"] / seconds["bare torch"]:.2f}x; '
          f'learn.predict / predict = {seconds["fastai learn.predict"] / seconds["pictaxon predict"]:.1f}x')

    folder = list(itertools.islice(itertools.cycle(photos), args.folder_size))
    print(f'\n2. {len(folder)} photos, batch size {args.batch_size}')
    def plain_loop():
        return [bare(folder[i:i + args.batch_size]) for i in range(0, len(folder), args.batch_size)]
    rates = {}
    bare(folder[:args.batch_size]); predict(model, folder[:args.batch_size])      # warm-up
    for name, fn in [('plain torch loop', plain_loop),
                     ('pictaxon predict', lambda: predict(model, folder, batch_size=args.batch_size)),
                     ('predict, portable copy', lambda: predict(portable, folder, batch_size=args.batch_size))]:
        start = time.perf_counter(); fn(); rates[name] = len(folder) / (time.perf_counter() - start)
        print(f'   {name:<22}{rates[name]:8.1f} images/s')
    print(f'   -> predict / plain = {rates["pictaxon predict"] / rates["plain torch loop"]:.2f}x (target >= 0.85x); '
          f'portable copy / plain = {rates["predict, portable copy"] / rates["plain torch loop"]:.2f}x')

    print('\n3. peak memory of a fresh process: load the model, predict one photo')
    peaks = {}
    for loader in ('portable', 'learner'):
        out = subprocess.run([sys.executable, __file__, '--memory-only', loader, '--model', args.model, '--threads',
                              str(args.threads)], capture_output=True, text=True, check=True)
        child = json.loads(out.stdout.strip().splitlines()[-1])
        peaks[loader] = child['peak_mb']
    torch_only = subprocess.run([sys.executable, '-c', 'import torch; print(next(l for l in open("/proc/self/status") '
                                 'if l.startswith("VmHWM:")).split()[1])'], capture_output=True, text=True, check=True)
    torch_mb = int(torch_only.stdout.split()[-1]) / 1024
    print(f'   load_predictor (the portable .pt, what the app and `pictaxon predict` load): peak RSS '
          f'{peaks["portable"]:.0f} MB (target < 700 MB; Binder allows 2048 MB); predicted {child["label"]}')
    print(f'   load_model (the fastai learner, for training and cleaning): peak RSS {peaks["learner"]:.0f} MB')
    print(f'   of which `import torch` alone: {torch_mb:.0f} MB (torch {torch.__version__}; '
          f'{"CUDA" if torch.version.cuda else "CPU"} build)')
    results = {'single_ms': {k: round(v * 1000, 2) for k, v in seconds.items()},
               'predict_over_bare': round(seconds['pictaxon predict'] / seconds['bare torch'], 3),
               'learn_predict_over_bare': round(seconds['fastai learn.predict'] / seconds['bare torch'], 3),
               'folder_images_per_s': {k: round(v, 2) for k, v in rates.items()},
               'folder_predict_over_plain': round(rates['pictaxon predict'] / rates['plain torch loop'], 3),
               'peak_rss_mb': round(peaks['portable']), 'peak_rss_learner_mb': round(peaks['learner']), 'import_torch_mb': round(torch_mb), 'threads': args.threads}
    out_dir = ROOT / 'bench' / 'out'
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / 'predict.json').write_text(json.dumps(results, indent=2) + '\n')
    print(f'\nwrote {out_dir / "predict.json"}')


class _nothing:
    def __enter__(self): return self
    def __exit__(self, *exc): return False


if __name__ == '__main__':
    main()
