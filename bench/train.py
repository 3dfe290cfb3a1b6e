"""Training on Binder's resources: the first model in seconds, a retrain after a small change, memory, accuracy.

Every command runs as a user would run it (`pictaxon train ...`) inside `../shared/tools/binder-box` (2 GB of
memory, one CPU) when that tool can run here (it needs root), and the figures come from one run:

  1. time to the first model: `pictaxon train DATASET --out M --quick`, feature cache empty, extractor built
     (it is built once per machine, beforehand, and that is timed apart), command start to model written;
  2. retrain after a 10-photo change (5 photos deleted, 5 new ones added) with `--valid-from` the first card:
     only the 5 new photos are computed;
  3. peak resident memory of both, and of the full fine-tune (`pictaxon train DATASET --out M`, the default
     recipe: 1 frozen + 4 unfrozen epochs in micro-batches of 8), with its validation accuracy on the same
     validation photos as the quick model (the same seeded split);
  4. the same quick-vs-full accuracy on the houseplants (600 photos, 5 classes) with --houseplants.

The fine-tune takes minutes (about 10 on one free CPU, more on shared cores): --full-card CARD.json reads the
accuracy of a fine-tune done earlier instead (e.g. models/bears.json), --skip-full leaves it out.
The load average is printed at the start and the end: wall times on shared cores are inflated by other jobs;
the CPU seconds beside them (user + system of the command) are what a free CPU would take.

Usage: .venv/bin/python bench/train.py [--houseplants] [--skip-full | --full-card CARD.json]
"""
import argparse, json, os, re, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('PICTAXON_SHARED', ROOT.parent / 'shared'))
BINDER_BOX = SHARED / 'tools' / 'binder-box'
PICTAXON = str(Path(sys.executable).with_name('pictaxon'))


def boxed(command: list, env: dict) -> dict:
    "Run `command` (in binder-box when possible); returns wall seconds, peak MB (None outside the box), output."
    use_box = BINDER_BOX.exists() and os.geteuid() == 0
    full = [sys.executable, str(BINDER_BOX), '--', *command] if use_box else command
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(full, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise SystemExit(f'failed ({result.returncode}): {" ".join(command)}\n{output[-3000:]}')
    peak = re.search(r'peak resident (\d+) MB', output)
    kills = re.search(r'OOM kills (\d+)', output)
    return {'seconds': round(seconds, 2), 'cpu_seconds': round(cpu, 2), 'peak_mb': int(peak.group(1)) if peak else None,
            'oom_kills': int(kills.group(1)) if kills else None, 'output': output, 'boxed': use_box}


def copy_dataset(source: Path, dest: Path) -> Path:
    for folder in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith('.')):
        shutil.copytree(folder, dest / folder.name)
    return dest


def change_ten_photos(dataset: Path) -> None:
    "Delete 5 photos, add 5 new ones (mirror images of others: new bytes, computed afresh)."
    from PIL import Image, ImageOps
    photos = sorted(p for p in dataset.rglob('*.jpg'))
    for p in photos[1:50:10]: p.unlink()
    for i, p in enumerate(photos[2:51:10]):
        ImageOps.mirror(Image.open(p).convert('RGB')).save(p.with_name(f'added_{i}.jpg'), quality=90)


def card(path) -> dict: return json.loads(Path(path).read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset', default=str(SHARED / 'datasets' / 'bears'))
    parser.add_argument('--houseplants', action='store_true', help='also quick (and full, unless --skip-full) on the houseplants')
    parser.add_argument('--skip-full', action='store_true', help='leave the fine-tune out')
    parser.add_argument('--full-card', metavar='CARD.json', help="read the fine-tune's accuracy from this card instead of training")
    args = parser.parse_args()
    dataset = Path(args.dataset)
    if not dataset.is_dir(): raise SystemExit(f'No dataset at {dataset}: this bench needs ../shared beside the clone.')

    work = Path(tempfile.mkdtemp(prefix='pictaxon-bench-train-'))
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PICTAXON_CACHE': str(work / 'cache')}
    load_start = os.getloadavg()
    print(f'load average at start {load_start[0]:.1f} (1 min) on {os.cpu_count()} CPUs; binder-box: '
          f'{"yes" if BINDER_BOX.exists() and os.geteuid() == 0 else "no (needs root and ../shared): no peak memory"}')
    results = {'load_average_start': load_start[0]}

    # The extractor is built once per machine (a torch export); time it apart from the first model.
    build = boxed([sys.executable, '-c', 'from pictaxon.features import FeatureExtractor; FeatureExtractor()'], env)
    results['build_extractor'] = {k: build[k] for k in ('seconds', 'cpu_seconds', 'peak_mb')}

    data = copy_dataset(dataset, work / 'data')
    first = boxed([PICTAXON, 'train', str(data), '--out', str(work / 'quick'), '--quick'], env)
    change_ten_photos(data)
    retrain = boxed([PICTAXON, 'train', str(data), '--out', str(work / 'quick2'), '--quick',
                     '--valid-from', str(work / 'quick.json')], env)
    quick_card, retrain_card = card(work / 'quick.json'), card(work / 'quick2.json')
    results['quick'] = {**{k: first[k] for k in ('seconds', 'cpu_seconds', 'peak_mb', 'oom_kills')},
                        'valid_accuracy': quick_card['valid_accuracy'], 'n_valid': quick_card['n_valid']}
    results['retrain_after_10_photos'] = {**{k: retrain[k] for k in ('seconds', 'cpu_seconds', 'peak_mb', 'oom_kills')},
                                          'valid_accuracy': retrain_card['valid_accuracy'],
                                          'n_valid': retrain_card['n_valid'], 'valid_missing': len(retrain_card['valid_missing'])}

    full = None
    if args.full_card:
        full_card = card(args.full_card)
        full = {'seconds': None, 'cpu_seconds': None, 'peak_mb': None, 'oom_kills': None, 'from': args.full_card}
    elif not args.skip_full:
        run = boxed([PICTAXON, 'train', str(dataset), '--out', str(work / 'full')], env)
        full_card = card(work / 'full.json')
        full = {k: run[k] for k in ('seconds', 'cpu_seconds', 'peak_mb', 'oom_kills')}
    if full is not None:
        full.update(valid_accuracy=full_card['valid_accuracy'], n_valid=full_card['n_valid'],
                    same_valid_photos=sorted(full_card.get('valid_files') or []) == sorted(quick_card['valid_files']))
        results['full'] = full

    if args.houseplants:
        plants = SHARED / 'datasets' / 'houseplants'
        quick_plants = boxed([PICTAXON, 'train', str(plants), '--out', str(work / 'plants_quick'), '--quick'], env)
        results['houseplants_quick'] = {**{k: quick_plants[k] for k in ('seconds', 'cpu_seconds', 'peak_mb')},
                                        'valid_accuracy': card(work / 'plants_quick.json')['valid_accuracy']}
        if not args.skip_full and not args.full_card:
            run = boxed([PICTAXON, 'train', str(plants), '--out', str(work / 'plants_full')], env)
            results['houseplants_full'] = {**{k: run[k] for k in ('seconds', 'cpu_seconds', 'peak_mb')},
                                           'valid_accuracy': card(work / 'plants_full.json')['valid_accuracy']}

    results['load_average_end'] = os.getloadavg()[0]
    mb = lambda v: '   n/a' if v is None else f'{v:5d} MB'
    print(f"\n{'':34}{'wall s':>9}{'CPU s':>8}{'peak':>10}{'valid acc':>11}")
    print(f"{'build the extractor (once)':34}{build['seconds']:9.1f}{build['cpu_seconds']:8.1f}{mb(build['peak_mb']):>10}")
    rows = [('first model (--quick, cold cache)', results['quick']),
            ('retrain after 10 photos changed', results['retrain_after_10_photos'])]
    if full: rows.append(('full fine-tune (default recipe)', full))
    for name in ('houseplants_quick', 'houseplants_full'):
        if name in results: rows.append((name.replace('_', ' '), results[name]))
    for name, r in rows:
        seconds = '      n/a' if r['seconds'] is None else f"{r['seconds']:9.1f}"
        cpu = '     n/a' if r['cpu_seconds'] is None else f"{r['cpu_seconds']:8.1f}"
        print(f"{name:34}{seconds}{cpu}{mb(r['peak_mb']):>10}{r['valid_accuracy']:>10.1%}")
    if full: print(f"full and quick judged on the same validation photos: {full['same_valid_photos']}")
    print(f"load average at end {results['load_average_end']:.1f}")
    out = ROOT / 'bench' / 'out'
    out.mkdir(parents=True, exist_ok=True)
    (out / 'train.json').write_text(json.dumps(results, indent=2) + '\n')
    print(f'wrote {out / "train.json"}')
    shutil.rmtree(work)


if __name__ == '__main__':
    main()
