"""Bulk prediction (pictaxon.scale): listing sources, result rows, parts and resume without Ray; then, slow, a local
Ray on a few thousand photos (scikit-image samples, plus the bears when ../shared is there) with bad files: the same
labels as plain predict, every bad file an error row, and a run killed with SIGKILL resumed to the same results."""
import os, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pictaxon.serving import load_predictor, predict
from pictaxon.core import PictaxonError
from pictaxon.scale import (COLUMNS, classify_sources, done_paths, list_sources, model_files, predict_bulk,
                            read_results, write_part)

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / 'models' / 'bears.json'
BEARS = Path(os.environ.get('PICTAXON_SHARED', ROOT.parent / 'shared')) / 'datasets' / 'bears'
PICTAXON = str(Path(sys.executable).with_name('pictaxon'))
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}
BAD = {'notes.jpg': b'a shopping list', 'page.png': b'<!doctype html><html>404</html>', 'empty.jpg': b'',
       'noise.webp': bytes(range(256)) * 20}


def make_archive(root: Path, n: int = 2000, bears: Path | None = BEARS) -> tuple[Path, list[str]]:
    """A folder of about `n` photos: the bears (when `bears` exists) plus random crops of scikit-image's samples, in
    sub-folders, and the files of `BAD` plus a truncated JPEG; returns the folder and the bad files' paths."""
    from skimage import data
    root.mkdir(parents=True, exist_ok=True)
    count = 0
    if bears and (bears / 'grizzly').is_dir():
        for photo in sorted(bears.glob('*/*.jpg')):
            (root / 'bears').mkdir(exist_ok=True)
            (root / 'bears' / f'{photo.parent.name}_{photo.name}').write_bytes(photo.read_bytes())
            count += 1
    rng, samples = np.random.RandomState(0), [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    for i in range(max(0, n - count)):
        pixels = samples[i % len(samples)]
        h, w = pixels.shape[:2]
        crop = rng.randint(min(h, w) // 3, min(h, w))
        y, x = rng.randint(0, h - crop + 1), rng.randint(0, w - crop + 1)
        folder = root / f'batch{i // 500}'
        folder.mkdir(exist_ok=True)
        Image.fromarray(pixels[y:y + crop, x:x + crop]).resize((96, 96)).save(folder / f'{i:05d}.jpg', quality=85)
    bad = root / 'bad'
    bad.mkdir(exist_ok=True)
    for name, content in BAD.items(): (bad / name).write_bytes(content)
    good = (root / 'batch0' / '00000.jpg').read_bytes()
    (bad / 'cut.jpg').write_bytes(good[:len(good) // 2])
    return root, sorted(str(p) for p in bad.iterdir())


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp('small'), n=12, bears=None)


def test_list_sources_folder_list_file_and_errors(small, tmp_path):
    folder, bad = small
    found = list_sources(folder)
    assert len(found) == 12 + len(bad) and set(bad) <= set(found)
    listing = tmp_path / 'photos.txt'
    listing.write_text('# my photos\n' + '\n'.join(found[:3]) + '\n\nhttps://example.invalid/x.jpg\n')
    assert list_sources(listing) == found[:3] + ['https://example.invalid/x.jpg']
    table = tmp_path / 'photos.csv'
    table.write_text('url,note\n' + '\n'.join(f'{p},x' for p in found[:2]) + '\n')
    assert list_sources(table) == found[:2]
    with pytest.raises(PictaxonError, match='no folder'): list_sources(tmp_path / 'nowhere')


def test_rows_match_predict_and_errors_are_rows(small):
    folder, bad = small
    sources = list_sources(folder)
    predictor = load_predictor(MODEL)
    rows = classify_sources(predictor, sources + [str(folder / 'missing.jpg')], batch_size=8)
    plain = predict(predictor, sources)
    assert [r['path'] for r in rows] == sources + [str(folder / 'missing.jpg')]
    assert [r['label'] for r in rows[:-1]] == [p.label for p in plain]
    errors = {r['path'] for r in rows if r['error']}
    assert errors == set(bad) | {str(folder / 'missing.jpg')}
    assert all(set(r) == set(COLUMNS) for r in rows)


def test_url_sources_are_downloaded_or_error_rows(small):
    import http.server, threading
    folder, _ = small
    photo = (folder / 'batch0' / '00001.jpg').read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == '/ok.jpg':
                self.send_response(200); self.send_header('Content-Length', str(len(photo))); self.end_headers()
                self.wfile.write(photo)
            else: self.send_error(404)
        def log_message(self, *args): pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f'http://127.0.0.1:{server.server_port}'
        predictor = load_predictor(MODEL)
        [refused] = classify_sources(predictor, [f'{base}/ok.jpg'])     # private addresses only when allowed
        assert 'Download failed' in refused['error'] and refused['label'] is None
        ok, gone = classify_sources(predictor, [f'{base}/ok.jpg', f'{base}/gone.jpg'], allow_private=True)
        assert ok['error'] is None and ok['label'] == predict(predictor, [photo])[0].label
        assert ok['path'] == f'{base}/ok.jpg' and 'Download failed' in gone['error'] and '404' in gone['error']
    finally: server.shutdown()


@pytest.mark.parametrize('fmt', ['parquet', 'csv'])
def test_parts_round_trip_and_resume_keys(tmp_path, fmt):
    rows = [{'path': '=cmd|x.jpg', 'page': None, 'label': 'grizzly', 'name': 'grizzly bear', 'probability': 0.9,
             'unknown': False, 'probabilities': '{"grizzly": 0.9, "black": 0.1}', 'error': None},
            {'path': 'doc.pdf', 'page': 2, 'label': None, 'name': None, 'probability': None, 'unknown': None,
             'probabilities': None, 'error': 'This file is empty (zero bytes).'}]
    out = tmp_path / 'out'
    first, second = write_part(out, rows[:1], fmt), write_part(out, rows[1:], fmt)
    assert [first.name, second.name] == [f'part-00000.{fmt}', f'part-00001.{fmt}']
    assert done_paths(out) == {'=cmd|x.jpg', 'doc.pdf'}
    both = tmp_path / 'both'                     # present and missing values in one part
    write_part(both, rows, fmt)
    assert read_results(both).to_json(orient='records') == read_results(out).to_json(orient='records')
    assert read_results(both)['label'].tolist() == ['grizzly', None] and read_results(both)['error'].tolist()[0] is None
    table = read_results(out)
    assert table['path'].tolist() == ['=cmd|x.jpg', 'doc.pdf'] and table['label'].tolist()[0] == 'grizzly'
    assert table['page'].tolist()[1] == 2 and table['probability'].tolist()[0] == pytest.approx(0.9)
    assert table['error'].tolist()[1] == 'This file is empty (zero bytes).' and table['error'].isna().tolist()[0]
    if fmt == 'csv': assert "'=cmd|x.jpg" in first.read_text()     # no formula reaches a spreadsheet
    assert not list(out.glob('.*'))                                  # nothing temporary left


def test_model_files_ships_the_serving_engine():
    files = model_files(MODEL)
    assert set(files) == {'bears.json', 'bears.onnx'}       # the card and the engine load_predictor picks, nothing else
    with pytest.raises(PictaxonError): model_files(ROOT / 'models' / 'nothing.json')


# ---- on a local Ray: slow (Ray starts in 10-60 s on a busy machine, then a few thousand photos) ----

@pytest.fixture(scope='module')
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp('archive'), n=2000)


@pytest.fixture(scope='module')
def plain(archive):
    "Plain predict's labels for every photo of the archive, in this process."
    folder, _ = archive
    sources = list_sources(folder)
    predictor = load_predictor(MODEL)
    return {p: r.label for p, r in zip(sources, predict(predictor, sources, batch_size=64))}


@pytest.mark.slow
def test_ray_gives_the_labels_of_plain_predict(archive, plain, tmp_path):
    folder, bad = archive
    out = tmp_path / 'results'
    report = predict_bulk(MODEL, folder, out, part_rows=500, batch_size=64)
    assert report.sources == len(plain) >= 2000 and report.classified == len(plain) and report.skipped == 0
    assert report.errors == len(bad) and 1 < len(report.parts) <= -(-len(plain) // 500)   # parts of >= 500 rows
    table = read_results(out)
    assert len(table) == len(plain) and table['path'].is_unique
    labels = dict(zip(table['path'], table['label']))
    assert {p: labels[p] for p in plain} == plain          # None for the bad files on both sides
    errors = table[table['error'].notna()]
    assert sorted(errors['path']) == bad and errors['label'].isna().all()
    again = predict_bulk(MODEL, folder, out)                # nothing left to do: Ray does not even start
    assert again.skipped == len(plain) and again.classified == 0 and again.seconds < 30


@pytest.mark.slow
def test_killed_run_resumes(archive, plain, tmp_path):
    import psutil
    folder, bad = archive
    out = tmp_path / 'results'
    command = [PICTAXON, 'predict', str(MODEL), str(folder), '--ray', '--results', str(out), '--part-rows', '200',
               '--format', 'csv', '--batch-size', '50']
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 400
    while not list(out.glob('part-*.csv')):
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, 'no part written within 400 s'
        time.sleep(0.2)
    children = psutil.Process(process.pid).children(recursive=True)     # the local Ray this run started
    process.send_signal(signal.SIGKILL)
    process.wait()
    for child in children:                                               # only processes this test started
        try: child.kill()
        except psutil.NoSuchProcess: pass
    kept = {p.name: p.read_bytes() for p in out.glob('part-*.csv')}
    assert 0 < sum(len(done_paths(out)) for _ in [0]) < len(plain), 'the run was killed before it finished'
    done_before = done_paths(out)
    again = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f'{len(done_before)} already done' in again.stdout
    for name, content in kept.items(): assert (out / name).read_bytes() == content   # finished parts untouched
    table = read_results(out)
    assert len(table) == len(plain) and table['path'].is_unique
    assert dict(zip(table['path'], table['label'])) == {p: l for p, l in plain.items()}
    assert sorted(table[table['error'].notna()]['path']) == bad
