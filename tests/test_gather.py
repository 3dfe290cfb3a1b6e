"""pictaxon gather against real HTTP on 127.0.0.1, the real ddgs client (network call replaced), real photos."""
import csv, hashlib, os, signal, socket, subprocess, sys, time
from pathlib import Path

import pytest
from ddgs.ddgs import DDGS  # the real class (ddgs.DDGS is a lazy proxy)
from ddgs.exceptions import RatelimitException, TimeoutException
from PIL import Image

from pictaxon.cli import main
from pictaxon.core import read_manifest
from pictaxon.gather import gather
from webserver import PhotoServer, bear_photos

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def photos(bears_dir):
    return bear_photos(bears_dir, per_class=4)


@pytest.fixture
def server(photos):
    with PhotoServer(photos, hang_s=3.0) as s:
        yield s


def write_urls(path, rows):
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['class', 'url'])
        writer.writerows(rows)
    return path


def kept_files(dest):
    return sorted(p.relative_to(dest).as_posix() for p in dest.glob('*/*') if not p.parent.name.startswith('.'))


def statuses(dest):
    return {row['source']: row['status'] for row in read_manifest(dest)}


def test_urls_against_misbehaving_server_keeps_exactly_the_valid_unique_photos(tmp_path, server, capsys):
    u = server.url
    rows = [('grizzly bear', f'{u}/photo/grizzly-00000001.jpg'),
            ('grizzly bear', f'{u}/photo/grizzly-00000002.jpg'),
            ('grizzly bear', f'{u}/redirect/grizzly-00000001.jpg'),   # the same photo at a second URL
            ('grizzly bear', f'{u}/near/grizzly-00000002.jpg'),       # a re-encoded near copy
            ('webp', f'{u}/webp.jpg'),                                # WEBP bytes named .jpg: a real photo
            ('grizzly bear', f'{u}/404'), ('grizzly bear', f'{u}/500'),
            ('grizzly bear', f'{u}/hang.jpg'), ('grizzly bear', f'{u}/html.jpg'),
            ('grizzly bear', f'{u}/truncated.jpg'), ('grizzly bear', f'{u}/loop.jpg'),
            ('grizzly bear', f'{u}/huge.jpg'), ('grizzly bear', f'{u}/huge-stream.jpg'),
            ('grizzly bear', f'{u}/bomb.png'), ('grizzly bear', f'{u}/empty.jpg'),
            ('black bear', f'{u}/photo/black-00000000.jpg'), ('black bear', 'ftp://example.com/x.jpg')]
    urls = write_urls(tmp_path / 'urls.csv', rows)
    dest = tmp_path / 'bears'
    code = main(['gather', str(dest), '--urls', str(urls), '--timeout', '1', '--max-mb', '20', '--allow-private-addresses'])
    assert code == 0
    out = capsys.readouterr().out
    assert 'grizzly_bear' in out and 'black_bear' in out and 'warning' not in out

    got = statuses(dest)
    assert len(got) == len(rows), 'every URL gets a manifest row'
    files_by_source = {r['source']: r['file'] for r in read_manifest(dest)}
    # downloads finish in any order: of a photo and its copy, whichever arrived first is kept
    for original, copy in [('/photo/grizzly-00000001.jpg', '/redirect/grizzly-00000001.jpg'),
                           ('/photo/grizzly-00000002.jpg', '/near/grizzly-00000002.jpg')]:
        pair = {got[u + original], got[u + copy]}
        kept_one = files_by_source[u + original] or files_by_source[u + copy]
        assert pair == {'kept', f'duplicate_of:{kept_one}'}, pair
    assert got[f'{u}/404'] == 'failed:http_404'
    assert got[f'{u}/500'] == 'failed:http_500'
    assert got[f'{u}/hang.jpg'] == 'failed:timeout'
    assert got[f'{u}/html.jpg'] == 'rejected:not_an_image:html'
    assert got[f'{u}/truncated.jpg'] == 'rejected:truncated'
    assert got[f'{u}/loop.jpg'] == 'failed:too_many_redirects'
    assert got[f'{u}/huge.jpg'] == 'failed:too_large'
    assert got[f'{u}/huge-stream.jpg'] == 'failed:too_large'
    assert got[f'{u}/bomb.png'] == 'rejected:decompression_bomb'
    assert got[f'{u}/empty.jpg'] == 'rejected:empty'
    assert got['ftp://example.com/x.jpg'] == 'failed:bad_url'
    assert got[f'{u}/webp.jpg'] == 'kept'

    files = kept_files(dest)
    assert len(files) == 4 and sum(f.startswith('grizzly_bear/') for f in files) == 2
    assert sum(f.startswith('webp/') for f in files) == 1
    for row in read_manifest(dest):
        if row['status'] == 'kept':
            path = dest / row['file']
            assert hashlib.sha256(path.read_bytes()).hexdigest() == row['sha256']
            with Image.open(path) as image:
                assert image.format == 'JPEG' and image.mode == 'RGB' and max(image.size) <= 400
                assert (image.width, image.height) == (int(row['width']), int(row['height']))


def test_max_size_zero_keeps_the_original_size(tmp_path, server, photos):
    urls = write_urls(tmp_path / 'urls.csv', [('teddy', f'{server.url}/photo/teddy-00000000.jpg')])
    gather(tmp_path / 'd', urls_file=urls, max_size=0, progress=False, allow_private=True)
    original = Image.open(__import__('io').BytesIO(photos['teddy-00000000.jpg'])).size
    [kept] = (tmp_path / 'd' / 'teddy').glob('*.jpg')
    assert Image.open(kept).size == original


def recorded_search(server, replies):
    """A real DDGS client whose network call returns `replies[query]` in turn (lists or exceptions)."""
    calls = []
    def images(self, query, **kwargs):
        calls.append(query)
        reply = replies[query].pop(0) if isinstance(replies[query], list) and replies[query] and \
            isinstance(replies[query][0], (Exception, list)) else replies[query]
        if isinstance(reply, Exception): raise reply
        return [{'image': f'{server.url}{p}', 'thumbnail': '', 'url': '', 'title': '', 'height': 0,
                 'width': 0, 'source': 'recorded'} for p in reply]
    return images, calls


def test_search_backs_off_on_rate_limits_then_succeeds(tmp_path, server, monkeypatch):
    replies = {'grizzly bear': [RatelimitException('202 Ratelimit'), TimeoutException('timed out'),
                                ['/photo/grizzly-00000001.jpg', '/photo/grizzly-00000002.jpg']],
               'grizzly bear photo': [['/photo/grizzly-00000002.jpg', '/photo/grizzly-00000003.jpg']]}
    images, calls = recorded_search(server, replies)
    monkeypatch.setattr(DDGS, 'images', images)
    started = time.monotonic()
    report = gather(tmp_path / 'd', ['grizzly bear'], backoff=0.05, progress=False, allow_private=True)
    assert calls == ['grizzly bear'] * 3 + ['grizzly bear photo']
    assert time.monotonic() - started >= 0.05 + 0.1, 'it waited between retries, longer each time'
    assert report.ok and report.counts['grizzly_bear']['kept'] == 3
    # the URL both queries returned was downloaded once
    assert [r['source'] for r in read_manifest(tmp_path / 'd')].count(f'{server.url}/photo/grizzly-00000002.jpg') == 1


def test_search_that_keeps_failing_explains_and_keeps_earlier_downloads(tmp_path, server, monkeypatch, capsys):
    replies = {'black bear': ['/photo/black-00000000.jpg', '/photo/black-00000001.jpg'], 'black bear photo': [],
               'teddy bear': RatelimitException('202 Ratelimit'), 'teddy bear photo': RatelimitException('403 Ratelimit')}
    images, calls = recorded_search(server, replies)
    monkeypatch.setattr(DDGS, 'images', images)
    monkeypatch.setattr('pictaxon.gather.time.sleep', lambda s: None)
    dest = tmp_path / 'd'
    code = main(['gather', str(dest), '--classes', 'black bear', 'teddy bear', '--allow-private-addresses'])
    captured = capsys.readouterr()
    assert code == 1
    assert "Image search for 'teddy bear' failed after 5 attempts" in captured.out
    assert 'run the same command again' in captured.out
    assert "the search 'black bear photo' found no images" in captured.out
    assert calls.count('teddy bear') == 5
    assert len(list((dest / 'black_bear').glob('*.jpg'))) == 2, 'earlier downloads survive'


def test_resume_skips_known_urls_and_adds_only_new_ones(tmp_path, server, photos):
    u = server.url
    all_rows = [('black', f'{u}/photo/{name}') for name in photos if name.startswith('black')] + [('black', f'{u}/404')]
    dest = tmp_path / 'd'
    gather(dest, urls_file=write_urls(tmp_path / 'a.csv', all_rows[:2]), progress=False, allow_private=True)
    before = {p: p.stat().st_mtime_ns for p in dest.glob('black/*.jpg')}
    requests_before = server.requests
    report = gather(dest, urls_file=write_urls(tmp_path / 'b.csv', all_rows), progress=False, allow_private=True)
    assert server.requests - requests_before == 3, 'only the three new URLs were fetched'
    assert report.counts['black'] == {'kept': 2, 'duplicate': 0, 'rejected': 0, 'failed': 1, 'quarantined': 0}
    assert all(p.stat().st_mtime_ns == m for p, m in before.items()), 'kept files are untouched'
    manifest = (dest / 'manifest.csv').read_bytes()
    again = gather(dest, urls_file=tmp_path / 'b.csv', progress=False, allow_private=True)
    assert again.counts == {} and (dest / 'manifest.csv').read_bytes() == manifest, 'idempotent'
    assert len(list(dest.glob('black/*.jpg'))) == 4


def test_search_resume_tops_a_class_up_to_per_class(tmp_path, server, monkeypatch, photos):
    paths = [f'/photo/{name}' for name in photos if name.startswith('black')]
    images, _ = recorded_search(server, {'black': paths, 'black photo': []})
    monkeypatch.setattr(DDGS, 'images', images)
    dest = tmp_path / 'd'
    gather(dest, ['black'], per_class=2, workers=1, progress=False, allow_private=True)
    assert len(list(dest.glob('black/*.jpg'))) == 2
    gather(dest, ['black'], per_class=3, workers=1, progress=False, allow_private=True)
    assert len(list(dest.glob('black/*.jpg'))) == 3


def test_a_photo_under_two_classes_goes_to_quarantine(tmp_path, server):
    u = server.url
    rows = [('grizzly', f'{u}/photo/grizzly-00000001.jpg'), ('grizzly', f'{u}/photo/grizzly-00000002.jpg'),
            ('black', f'{u}/photo/black-00000000.jpg'), ('black', f'{u}/near/grizzly-00000001.jpg')]
    dest = tmp_path / 'd'
    report = gather(dest, urls_file=write_urls(tmp_path / 'u.csv', rows), progress=False, allow_private=True)
    # one layout for gather and clean: .quarantine/<class it was in>/<name>
    assert sorted(p.parent.name for p in (dest / '.quarantine').glob('*/*.jpg')) == ['black', 'grizzly']
    assert len(list((dest / 'grizzly').glob('*.jpg'))) == 1 and len(list((dest / 'black').glob('*.jpg'))) == 1
    got = statuses(dest)
    assert got[f'{u}/photo/grizzly-00000001.jpg'] == 'quarantined:ambiguous_label:black'
    assert got[f'{u}/near/grizzly-00000001.jpg'] == 'quarantined:ambiguous_label:grizzly'
    assert report.ok and 'both copies' in report.summary()      # a warning: everything asked for was done
    for row in read_manifest(dest):
        if row['file']: assert (dest / row['file']).is_file()


def test_from_folder_imports_the_shared_bears(tmp_path, bears_dir):
    mine = tmp_path / 'mine'
    (mine / 'Teddy Bear').mkdir(parents=True)
    for i, src in enumerate(sorted((bears_dir / 'teddy').glob('*.jpg'))[:3]):
        (mine / 'Teddy Bear' / f'{i}.jpg').write_bytes(src.read_bytes())
    (mine / 'Teddy Bear' / 'saved-page.jpg').write_text('<html><body>Sorry</body></html>')
    (mine / 'Teddy Bear' / 'copy.jpg').write_bytes((mine / 'Teddy Bear' / '0.jpg').read_bytes())
    dest = tmp_path / 'd'
    report = gather(dest, from_folder=mine, progress=False, allow_private=True)
    assert report.counts['teddy_bear'] == {'kept': 3, 'duplicate': 1, 'rejected': 1, 'failed': 0, 'quarantined': 0}
    assert statuses(dest)[str((mine / 'Teddy Bear' / 'saved-page.jpg').resolve())] == 'rejected:not_an_image:html'


@pytest.mark.slow
def test_cli_from_folder_keeps_all_414_bears(tmp_path, bears_dir):
    dest = tmp_path / 'b'
    result = subprocess.run([sys.executable, '-m', 'pictaxon.cli', 'gather', str(dest), '--from-folder', str(bears_dir)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = read_manifest(dest)
    assert len(rows) == 414 and all(r['status'] == 'kept' for r in rows)
    assert {d.name: len(list(d.glob('*.jpg'))) for d in dest.iterdir() if d.is_dir()} == \
        {'black': 139, 'grizzly': 133, 'teddy': 142}


def test_ctrl_c_leaves_no_partial_file_and_a_rerun_completes(tmp_path, bears_dir):
    photos = bear_photos(bears_dir, per_class=20)
    # 0.2 s a photo on 2 workers: the whole gather takes 6 s, so Ctrl-C lands mid-run even when a busy machine
    # lets this test's own polling fall a second or two behind.
    with PhotoServer(photos, latency=0.2) as server:
        urls = write_urls(tmp_path / 'u.csv', [(name.split('-')[0], f'{server.url}/photo/{name}') for name in photos])
        dest = tmp_path / 'd'
        command = [sys.executable, '-m', 'pictaxon.cli', 'gather', str(dest), '--urls', str(urls), '--workers', '2',
                   '--allow-private-addresses']
        # Start the gather as a terminal would: Ctrl-C delivered and handled by default, whatever the test runner
        # inherited (a suite started in the background may have SIGINT ignored or blocked, and a child keeps both).
        def as_in_a_terminal():
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=as_in_a_terminal)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(dest.glob('*/*.jpg'))) < 5: time.sleep(0.02)
        signals = [line for line in Path(f'/proc/{process.pid}/status').read_text().splitlines()
                   if line.startswith(('SigBlk', 'SigIgn', 'SigCgt'))]      # shown if Ctrl-C does not stop it
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, (err, signals)
        assert 'interrupted' in err and 'run the same command again' in err
        interrupted_with = len(list(dest.glob('*/*.jpg')))
        assert 5 <= interrupted_with < 60
        assert not [p for p in dest.rglob('*') if p.name.endswith('.partial')]
        kept = {r['file'] for r in read_manifest(dest) if r['status'] == 'kept'}
        assert kept == {p.relative_to(dest).as_posix() for p in dest.glob('*/*.jpg')}
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stdout[-1500:] + rerun.stderr[-1500:]
        assert len(list(dest.glob('*/*.jpg'))) == 60


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, '-m', 'pictaxon.cli', 'gather', '--help'], capture_output=True, text=True).stdout
    for option in ['--classes', '--per-class', '--queries', '--max-size', '--workers', '--urls', '--from-folder',
                   '--timeout', '--max-mb', '--near-threshold', '--min-side', '--folder']:
        assert option in out
    top = subprocess.run([sys.executable, '-m', 'pictaxon.cli', '--help'], capture_output=True, text=True).stdout
    assert 'gather' in top


def test_nothing_to_gather_is_a_clear_error(tmp_path, capsys):
    assert main(['gather', str(tmp_path / 'd')]) == 1
    assert 'Nothing to gather' in capsys.readouterr().err


# ---- issue 9: nothing damaged, nothing stuck (photos every install has: scikit-image samples) ----

from pictaxon.core import DatasetBusy, dataset_lock, sha256_file
from pictaxon.moves import apply_decisions, undo
from webserver import sample_photos


@pytest.fixture(scope='module')
def samples():
    return sample_photos(4)


@pytest.fixture
def sample_server(samples):
    with PhotoServer(samples, hang_s=3.0, trickle_s=0.3) as s:
        yield s


def own_folder(root, samples, classes=('cat', 'coffee')):
    "Your own photos arranged as root/<class>/*.jpg."
    for name, data in samples.items():
        cls = name.split('-')[0]
        if cls in classes:
            (root / cls).mkdir(parents=True, exist_ok=True)
            (root / cls / name).write_bytes(data)
    return root


def photo_files(dest):
    "{dataset-relative path: sha256} of every photo, quarantine included."
    return {p.relative_to(dest).as_posix(): sha256_file(p) for p in dest.rglob('*.jpg')}


def test_rerun_after_a_relabel_keeps_the_relabel_and_one_quarantine_layout(tmp_path, samples, sample_server):
    """Item 1: a re-run of the same gather (folder or URLs) does not undo a clean; one quarantine layout."""
    mine, dest = own_folder(tmp_path / 'mine', samples), tmp_path / 'd'
    gather(dest, from_folder=mine, progress=False)
    urls = write_urls(tmp_path / 'u.csv', [('rocket', f'{sample_server.url}/photo/rocket-{i}.jpg') for i in range(3)])
    gather(dest, urls_file=urls, progress=False, allow_private=True)
    cat = sorted((dest / 'cat').glob('*.jpg'))
    rocket = sorted((dest / 'rocket').glob('*.jpg'))
    apply_decisions(dest, [(f'cat/{cat[0].name}', 'relabel', 'coffee'), (f'rocket/{rocket[0].name}', 'relabel', 'cat'),
                           (f'cat/{cat[1].name}', 'delete')])
    after_clean, manifest = photo_files(dest), (dest / 'manifest.csv').read_bytes()
    assert f'.quarantine/cat/{cat[1].name}' in after_clean              # clean's layout: .quarantine/<class>/<name>
    again = gather(dest, from_folder=mine, progress=False)
    again_urls = gather(dest, urls_file=urls, progress=False, allow_private=True)
    assert again.counts == {} and again_urls.counts == {} and again.ok and again_urls.ok
    assert photo_files(dest) == after_clean and (dest / 'manifest.csv').read_bytes() == manifest
    # the same photos at new URLs (under their old class): duplicates of where the person put them, not "ambiguous"
    moved_urls = write_urls(tmp_path / 'v.csv', [('rocket', f'{sample_server.url}/redirect/rocket-0.jpg')])
    report = gather(dest, urls_file=moved_urls, progress=False, allow_private=True)
    assert report.counts['rocket']['duplicate'] == 1 and not report.warnings
    assert photo_files(dest) == after_clean


def test_class_names_keep_every_script_and_never_collide_or_escape(tmp_path, samples, sample_server, capsys):
    """Item 2: letters of any script; two names for one folder name both; --folder stays inside DEST; an emoji
    class fails alone."""
    u = sample_server.url
    rows = [('стекло bottles', f'{u}/photo/cat-0.jpg'), ('пластик bottles', f'{u}/photo/coffee-0.jpg'),
            ('玻璃', f'{u}/photo/rocket-0.jpg'), ('🐻', f'{u}/photo/astronaut-0.jpg')]
    dest = tmp_path / 'd'
    code = main(['gather', str(dest), '--urls', str(write_urls(tmp_path / 'u.csv', rows)), '--allow-private-addresses'])
    out = capsys.readouterr().out
    assert {p.parent.name for p in dest.glob('*/*.jpg')} == {'стекло_bottles', 'пластик_bottles', '玻璃'}
    assert code == 1 and "'🐻' has no letters or digits" in out and '--folder' in out   # the class asked for is empty
    assert statuses(dest)[f'{u}/photo/astronaut-0.jpg'] == 'failed:bad_class_name'
    clash = write_urls(tmp_path / 'c.csv', [('Grizzly', f'{u}/photo/cat-1.jpg'), ('grizzly!', f'{u}/photo/cat-2.jpg')])
    assert main(['gather', str(tmp_path / 'e'), '--urls', str(clash), '--allow-private-addresses']) == 1
    err = capsys.readouterr().err
    assert "'Grizzly' and 'grizzly!' would share the folder 'grizzly'" in err and not (tmp_path / 'e').exists()
    mine = own_folder(tmp_path / 'mine', samples, ('cat',))
    assert main(['gather', str(tmp_path / 'in' / 'f'), '--from-folder', str(mine), '--folder', 'cat=../escape']) == 1
    assert 'not one folder name' in capsys.readouterr().err
    assert not (tmp_path / 'in' / 'escape').exists() and not list(tmp_path.glob('in/**/*.jpg'))


def test_gather_waits_for_a_clean_and_never_writes_a_stale_manifest(tmp_path, samples, sample_server, monkeypatch):
    """Item 5: gather takes the dataset's lock, and re-reads the manifest a clean changed meanwhile."""
    import threading
    import pictaxon.gather as g
    u, dest = sample_server.url, tmp_path / 'd'
    gather(dest, urls_file=write_urls(tmp_path / 'a.csv', [('cat', f'{u}/photo/cat-{i}.jpg') for i in range(3)]),
           progress=False, allow_private=True)
    first = sorted(p.name for p in (dest / 'cat').glob('*.jpg'))
    # While gather downloads, a clean quarantines a photo that the next download is a near copy of (under another
    # class): the old code moved a file that was no longer there (FileNotFoundError) or rewrote the clean's rows.
    real, cleaned = g.download, []
    def download_then_clean(url, **kwargs):
        if not cleaned:
            cleaned.append(apply_decisions(dest, [(f'cat/{n}', 'delete') for n in first]))
        return real(url, **kwargs)
    monkeypatch.setattr(g, 'download', download_then_clean)
    rows = [('coffee', f'{u}/near/cat-{i}.jpg') for i in range(3)] + [('coffee', f'{u}/photo/coffee-0.jpg')]
    report = gather(dest, urls_file=write_urls(tmp_path / 'b.csv', rows), workers=1, progress=False, allow_private=True)
    assert report.ok
    manifest = read_manifest(dest)
    on_disk = {p.relative_to(dest).as_posix() for p in dest.rglob('*.jpg')}
    assert {r['file'] for r in manifest if r['file']} == on_disk           # the manifest agrees with the files
    assert sum(r['status'] == 'quarantined:cleaning' for r in manifest) == 3
    assert [p.name for p in (dest / 'coffee').glob('*.jpg')] and len(on_disk) == 4   # 3 quarantined + coffee-0
    # and while a clean holds the lock, gather waits for it
    monkeypatch.setattr(g, 'download', real)
    held = os.open(dest, os.O_RDONLY)
    import fcntl
    fcntl.flock(held, fcntl.LOCK_EX)
    before = (dest / 'manifest.csv').read_bytes()
    worker = threading.Thread(target=gather, args=(dest,), kwargs=dict(
        urls_file=write_urls(tmp_path / 'c.csv', [('coffee', f'{u}/photo/coffee-1.jpg')]), progress=False, allow_private=True))
    worker.start(); time.sleep(1.0)
    assert (dest / 'manifest.csv').read_bytes() == before, 'gather wrote while a clean held the dataset'
    os.close(held); worker.join(30)
    assert len(read_manifest(dest)) == len(manifest) + 1


@pytest.mark.parametrize('ending', [b'\r\n', b'\n'])
def test_manifest_keeps_its_line_endings_through_apply_undo_and_gather(tmp_path, samples, ending):
    """Item 6: apply + undo gives back the manifest byte for byte; a later gather does not mix line endings."""
    mine, dest = own_folder(tmp_path / 'mine', samples), tmp_path / 'd'
    gather(dest, from_folder=own_folder(tmp_path / 'first', samples, ('cat',)), progress=False)
    path = dest / 'manifest.csv'
    path.write_bytes(path.read_bytes().replace(b'\r\n', b'\n').replace(b'\n', ending))
    original = path.read_bytes()
    [photo, *_] = sorted((dest / 'cat').glob('*.jpg'))
    apply_decisions(dest, [(f'cat/{photo.name}', 'relabel', 'coffee')])
    undo(dest)
    assert path.read_bytes() == original
    apply_decisions(dest, [(f'cat/{photo.name}', 'delete')])
    gather(dest, from_folder=mine, progress=False)
    data = path.read_bytes()
    assert data.count(b'\n') == data.count(ending) and data.count(b'\n') > 5


def test_malformed_and_schemeless_urls_fail_alone(tmp_path, sample_server, capsys):
    """Items 8 and 10: a URL that does not parse, and a row that names a local file, are one failed row each."""
    secret = tmp_path / 'secret.jpg'
    secret.write_bytes(sample_photos(1)['cat-0.jpg'])
    u = sample_server.url
    rows = [('cat', 'http://[::1:8771/bad'), ('cat', str(secret)), ('cat', 'file://' + str(secret)),
            ('cat', f'{u}/photo/cat-0.jpg')]
    dest = tmp_path / 'd'
    urls = write_urls(tmp_path / 'u.csv', rows)
    for _ in range(2):                              # and the re-run too
        assert main(['gather', str(dest), '--urls', str(urls), '--allow-private-addresses']) == 0
    got = statuses(dest)
    assert got['http://[::1:8771/bad'] == got[str(secret)] == got['file://' + str(secret)] == 'failed:bad_url'
    assert got[f'{u}/photo/cat-0.jpg'] == 'kept' and len(list(dest.glob('cat/*.jpg'))) == 1
    assert 'Traceback' not in capsys.readouterr().err


def test_a_trickling_server_is_cut_at_the_deadline(sample_server):
    """Item 9: 40 bytes, one every 0.3 s (12 s) under a 0.5 s timeout stops at the 2 s deadline."""
    from pictaxon.gather import DownloadFailed, download
    started = time.monotonic()
    with pytest.raises(DownloadFailed) as failed:
        download(f'{sample_server.url}/trickle.jpg', timeout=0.5, allow_private=True)
    assert failed.value.reason == 'timeout' and time.monotonic() - started < 4


def test_private_addresses_and_credentials(tmp_path, sample_server, monkeypatch):
    """Item 10: every hop is checked (a redirect to localhost is refused); credentials never reach the manifest."""
    import pictaxon.gather as g
    real = g._addresses
    def pretend_public(host, port):                    # 127.0.0.1 plays a public server; 'localhost' is itself
        return {'93.184.216.34'} if host == '127.0.0.1' else real(host, port)
    monkeypatch.setattr(g, '_addresses', pretend_public)
    u = sample_server.url
    with_password = u.replace('http://', 'http://ann:s3cret@') + '/photo/coffee-0.jpg'
    rows = [('cat', f'{u}/to-localhost/cat-0.jpg'), ('cat', f'{u}/photo/cat-1.jpg'), ('coffee', with_password)]
    dest = tmp_path / 'd'
    report = gather(dest, urls_file=write_urls(tmp_path / 'u.csv', rows), progress=False)
    got = statuses(dest)
    assert got[f'{u}/to-localhost/cat-0.jpg'] == 'failed:private_address'
    assert got[f'{u}/photo/cat-1.jpg'] == 'kept' and got[f'{u}/photo/coffee-0.jpg'] == 'kept' and report.ok
    assert b's3cret' not in (dest / 'manifest.csv').read_bytes() and b'ann' not in (dest / 'manifest.csv').read_bytes()
    monkeypatch.setattr(g, '_addresses', real)
    refused = gather(tmp_path / 'e', urls_file=write_urls(tmp_path / 'v.csv', rows[1:2]), progress=False)
    assert statuses(tmp_path / 'e')[f'{u}/photo/cat-1.jpg'] == 'failed:private_address' and not refused.ok
    assert gather(tmp_path / 'e', urls_file=tmp_path / 'v.csv', progress=False, allow_private=True).counts == {}  # known


def test_offline_search_says_no_network_in_one_sentence_within_seconds(tmp_path, monkeypatch, capsys):
    """Item 13: no network is one clear sentence at once, not minutes of backoff blamed on rate limits."""
    from ddgs.exceptions import DDGSException
    def offline(self, query, **kwargs):
        raise DDGSException(DDGSException("DNSError: error sending request for url (https://duckduckgo.com/?q=x) > "
                                          "error resolving DNS > DNS error: no records found"))
    monkeypatch.setattr(DDGS, 'images', offline)
    monkeypatch.setattr('pictaxon.gather.network_reachable', lambda *a, **k: False)
    started = time.monotonic()
    code = main(['gather', str(tmp_path / 'd'), '--classes', 'grizzly bear', 'black bear'])
    captured = capsys.readouterr()
    assert code == 1 and time.monotonic() - started < 5
    assert captured.err.strip().startswith('pictaxon gather: No network:') and len(captured.err.strip().splitlines()) == 1
    assert 'rate' not in captured.err.lower() and 'nothing new' not in captured.out


def test_exit_code_is_non_zero_only_when_something_asked_for_failed(tmp_path, sample_server):
    """Item 14: per-URL failures and a quarantined ambiguous photo exit 0; a class left empty exits 1."""
    u = sample_server.url
    rows = [('cat', f'{u}/photo/cat-0.jpg'), ('cat', f'{u}/photo/cat-1.jpg'), ('cat', f'{u}/404'),
            ('coffee', f'{u}/photo/coffee-0.jpg'), ('coffee', f'{u}/near/cat-0.jpg')]
    urls = write_urls(tmp_path / 'u.csv', rows)
    assert main(['gather', str(tmp_path / 'd'), '--urls', str(urls), '--allow-private-addresses']) == 0
    empty = write_urls(tmp_path / 'e.csv', [('cat', f'{u}/photo/cat-1.jpg'), ('dog', f'{u}/404')])
    assert main(['gather', str(tmp_path / 'e'), '--urls', str(empty), '--allow-private-addresses']) == 1


def test_formula_like_names_stay_text_in_the_manifest(tmp_path, samples):
    """Item 11: a class or file named like a spreadsheet formula is written neutralised and read back as itself."""
    mine = tmp_path / 'mine'
    (mine / '=HYPERLINK("evil")').mkdir(parents=True)
    (mine / '=HYPERLINK("evil")' / '@cmd.jpg').write_bytes(samples['cat-0.jpg'])
    dest = tmp_path / 'd'
    gather(dest, from_folder=mine, progress=False)
    raw = (dest / 'manifest.csv').read_text(encoding='utf-8')
    assert '"\'=HYPERLINK(""evil"")"' in raw and '\n=' not in raw and ',=' not in raw
    assert read_manifest(dest)[0]['class'] == '=HYPERLINK("evil")'
    assert [p.parent.name for p in dest.glob('*/*.jpg')] == ['hyperlink_evil']


def test_pdfs_from_your_folder_become_page_photos(tmp_path, samples):
    """Issue 11 item 3: each PDF page goes through the same checks, recorded as file.pdf#page=N."""
    mine = own_folder(tmp_path / 'mine', samples, ('cat',))
    pages = [Image.open(__import__('io').BytesIO(samples[f'coffee-{i}.jpg'])).convert('RGB') for i in range(3)]
    pages[0].save(mine / 'cat' / 'scan.pdf', save_all=True, append_images=pages[1:])
    dest = tmp_path / 'd'
    report = gather(dest, from_folder=mine, progress=False)
    pdf = str((mine / 'cat' / 'scan.pdf').resolve())
    got = statuses(dest)
    assert [got[f'{pdf}#page={n}'] for n in (1, 2, 3)] == ['kept'] * 3
    assert report.counts['cat']['kept'] == 7
    assert gather(dest, from_folder=mine, progress=False).counts == {}     # resumed: nothing rendered twice
    many = tmp_path / 'many'
    (many / 'cat').mkdir(parents=True)
    pages[0].save(many / 'cat' / 'long.pdf', save_all=True, append_images=pages[:1] * 5)
    gather(tmp_path / 'e', from_folder=many, progress=False, max_pages=3)
    assert statuses(tmp_path / 'e')[str((many / 'cat' / 'long.pdf').resolve())] == 'rejected:too_many_pages'


def test_a_class_cleaned_away_while_gather_runs_is_not_reported_as_a_failed_download(tmp_path):
    """A person moves every photo of a class to the quarantine while gather is still working on that class: gather
    kept a photo for it, so it says nothing failed (no exit 1), and the photo waits in the quarantine for undo."""
    photos = sample_photos(1)
    name = sorted(photos)[0]                                      # one cat photo
    dest = tmp_path / 'd'
    cleaned = []
    def person_cleans_meanwhile(path):
        if path != '/404' or cleaned: return                       # while gather fetches the class's second URL
        deadline = time.time() + 10
        while not (kept := sorted((dest / 'cat').glob('*.jpg'))) and time.time() < deadline: time.sleep(0.01)
        cleaned.append(apply_decisions(dest, [(f'cat/{kept[0].name}', 'delete')]))
    with PhotoServer(photos, on_request=person_cleans_meanwhile) as server:
        urls = write_urls(tmp_path / 'u.csv', [('cat', f'{server.url}/photo/{name}'), ('cat', f'{server.url}/404')])
        report = gather(dest, urls_file=urls, progress=False, allow_private=True, workers=1)
    assert cleaned, 'the clean ran while gather did'
    assert report.ok, report.summary()
    assert report.counts['cat']['kept'] == 1 and not list((dest / 'cat').glob('*.jpg'))
    undo(dest)
    assert len(list((dest / 'cat').glob('*.jpg'))) == 1                # nothing lost


def test_gather_and_clean_at_the_same_time_keep_manifest_and_files_in_step(tmp_path):
    """Item 5, as it happens: a gather process downloads while this process applies and undoes cleans on the
    same dataset; afterwards the manifest agrees with the files and nothing is lost."""
    photos = sample_photos(8)                                   # 32 photos, 4 classes
    names = sorted(photos)
    dest = tmp_path / 'd'
    with PhotoServer(photos, latency=0.03) as server:
        first = write_urls(tmp_path / 'a.csv', [(n.split('-')[0], f'{server.url}/photo/{n}') for n in names[::2]])
        gather(dest, urls_file=first, progress=False, allow_private=True)
        second = write_urls(tmp_path / 'b.csv', [(n.split('-')[0], f'{server.url}/photo/{n}') for n in names[1::2]])
        process = subprocess.Popen([sys.executable, '-m', 'pictaxon.cli', 'gather', str(dest), '--urls', str(second),
                                    '--workers', '2', '--allow-private-addresses'],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        cleans = 0
        while process.poll() is None:
            kept = sorted(p.relative_to(dest).as_posix() for p in dest.glob('*/*.jpg') if p.parent.name != '.quarantine')
            if len(kept) < 6: undo(dest, all=True); continue     # keep some photos to clean
            i = cleans % len(kept)
            apply_decisions(dest, [(kept[i], 'delete'), (kept[(i + 1) % len(kept)], 'relabel', 'cat')])
            if cleans % 2: undo(dest)
            cleans += 1
            time.sleep(0.05)                 # a person's pace; a loop with no pause would starve gather of the lock
        out, err = process.communicate()
    assert process.returncode == 0, out + err
    assert cleans >= 2, 'the cleans ran while gather did'
    files = {p.relative_to(dest).as_posix(): sha256_file(p) for p in dest.rglob('*.jpg')}
    rows = [r for r in read_manifest(dest) if r['file']]
    assert sorted(r['file'] for r in rows) == sorted(files)               # one row per file, no row without its file
    assert all(files[r['file']] == r['sha256'] for r in rows)
    assert len(files) == len(set(files.values())) == 32                  # every photo once, none lost
    undo(dest, all=True)
    assert len({p.parent.name for p in dest.glob('*/*.jpg')} - {'.quarantine'}) == 4
