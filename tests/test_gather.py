"""pictaxon gather against real HTTP on 127.0.0.1, the real ddgs client (network call replaced), real photos."""
import csv, hashlib, os, signal, subprocess, sys, time
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
    code = main(['gather', str(dest), '--urls', str(urls), '--timeout', '1', '--max-mb', '20'])
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
    gather(tmp_path / 'd', urls_file=urls, max_size=0, progress=False)
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
    report = gather(tmp_path / 'd', ['grizzly bear'], backoff=0.05, progress=False)
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
    code = main(['gather', str(dest), '--classes', 'black bear', 'teddy bear'])
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
    gather(dest, urls_file=write_urls(tmp_path / 'a.csv', all_rows[:2]), progress=False)
    before = {p: p.stat().st_mtime_ns for p in dest.glob('black/*.jpg')}
    requests_before = server.requests
    report = gather(dest, urls_file=write_urls(tmp_path / 'b.csv', all_rows), progress=False)
    assert server.requests - requests_before == 3, 'only the three new URLs were fetched'
    assert report.counts['black'] == {'kept': 2, 'duplicate': 0, 'rejected': 0, 'failed': 1, 'quarantined': 0}
    assert all(p.stat().st_mtime_ns == m for p, m in before.items()), 'kept files are untouched'
    manifest = (dest / 'manifest.csv').read_bytes()
    again = gather(dest, urls_file=tmp_path / 'b.csv', progress=False)
    assert again.counts == {} and (dest / 'manifest.csv').read_bytes() == manifest, 'idempotent'
    assert len(list(dest.glob('black/*.jpg'))) == 4


def test_search_resume_tops_a_class_up_to_per_class(tmp_path, server, monkeypatch, photos):
    paths = [f'/photo/{name}' for name in photos if name.startswith('black')]
    images, _ = recorded_search(server, {'black': paths, 'black photo': []})
    monkeypatch.setattr(DDGS, 'images', images)
    dest = tmp_path / 'd'
    gather(dest, ['black'], per_class=2, workers=1, progress=False)
    assert len(list(dest.glob('black/*.jpg'))) == 2
    gather(dest, ['black'], per_class=3, workers=1, progress=False)
    assert len(list(dest.glob('black/*.jpg'))) == 3


def test_a_photo_under_two_classes_goes_to_quarantine(tmp_path, server):
    u = server.url
    rows = [('grizzly', f'{u}/photo/grizzly-00000001.jpg'), ('grizzly', f'{u}/photo/grizzly-00000002.jpg'),
            ('black', f'{u}/photo/black-00000000.jpg'), ('black', f'{u}/near/grizzly-00000001.jpg')]
    dest = tmp_path / 'd'
    report = gather(dest, urls_file=write_urls(tmp_path / 'u.csv', rows), progress=False)
    assert len(list((dest / '.quarantine').glob('*.jpg'))) == 2
    assert len(list((dest / 'grizzly').glob('*.jpg'))) == 1 and len(list((dest / 'black').glob('*.jpg'))) == 1
    got = statuses(dest)
    assert got[f'{u}/photo/grizzly-00000001.jpg'] == 'quarantined:ambiguous_label:black'
    assert got[f'{u}/near/grizzly-00000001.jpg'] == 'quarantined:ambiguous_label:grizzly'
    assert not report.ok and 'both copies' in report.summary()
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
    report = gather(dest, from_folder=mine, progress=False)
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
    with PhotoServer(photos, latency=0.05) as server:
        urls = write_urls(tmp_path / 'u.csv', [(name.split('-')[0], f'{server.url}/photo/{name}') for name in photos])
        dest = tmp_path / 'd'
        command = [sys.executable, '-m', 'pictaxon.cli', 'gather', str(dest), '--urls', str(urls), '--workers', '2']
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(dest.glob('*/*.jpg'))) < 5: time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        assert 'interrupted' in err and 'run the same command again' in err
        interrupted_with = len(list(dest.glob('*/*.jpg')))
        assert 5 <= interrupted_with < 60
        assert not [p for p in dest.rglob('*') if p.name.endswith('.partial')]
        kept = {r['file'] for r in read_manifest(dest) if r['status'] == 'kept'}
        assert kept == {p.relative_to(dest).as_posix() for p in dest.glob('*/*.jpg')}
        subprocess.run(command, check=True, capture_output=True, timeout=120)
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
