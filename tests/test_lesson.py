"""The learner's path: the lesson's helpers (zip import, sample, grid, downloads, model upload, app link), the
app's ?model= address, and the committed lesson.ipynb (saved outputs, no tracebacks, linked from the README).
`make test` also runs the lesson itself top to bottom (the lesson-test target)."""
import io, json, os, stat, zipfile
from pathlib import Path

import pytest

from pictaxon import lesson
from pictaxon.core import read_manifest, sha256_bytes

ROOT = Path(__file__).resolve().parents[1]


def upload_item(name: str, content: bytes) -> dict:
    "One file as ipywidgets 8's FileUpload holds it."
    from datetime import datetime, timezone
    return {'name': name, 'type': '', 'size': len(content), 'content': memoryview(content),
            'last_modified': datetime.now(timezone.utc)}


def zip_of(entries: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as z:
        for name, data in entries.items(): z.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope='module')
def raw_photos(tmp_path_factory) -> Path:
    return lesson.sample_photos(tmp_path_factory.mktemp('raw'), per_class=3, misfiled=0)


def photos_zip(raw: Path, top: str = 'mine/') -> bytes:
    return zip_of({f'{top}{p.parent.name}/{p.name}': p.read_bytes() for p in sorted(raw.rglob('*.jpg'))})


# --- zips: safe extraction -------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['../evil.jpg', '/tmp/evil.jpg', 'C:/evil.jpg', 'cat/../../evil.jpg',
                                  'cat\\..\\..\\evil.jpg', '..'])
def test_zip_member_outside_the_folder_is_refused(tmp_path, name):
    dest = tmp_path/'a'/'b'
    with pytest.raises(lesson.ZipImportError, match='points outside'):
        lesson.safe_extract(zip_of({'cat/1.jpg': b'x', name: b'x'}), dest)
    assert not list(tmp_path.rglob('evil.jpg')) and not Path('/tmp/evil.jpg').exists()


def test_zip_links_are_skipped_not_followed(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as z:
        link = zipfile.ZipInfo('cat/passwd.jpg')
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, '/etc/passwd')
        z.writestr('cat/1.jpg', b'x')
    out = lesson.safe_extract(buffer.getvalue(), tmp_path/'x')
    assert out.skipped == [('cat/passwd.jpg', 'a link')]
    assert sorted(p.name for p in (tmp_path/'x'/'cat').iterdir()) == ['1.jpg']


def test_zip_limits_count_the_bytes_written_not_the_header(tmp_path):
    with pytest.raises(lesson.ZipImportError, match='limit is 3'):
        lesson.safe_extract(zip_of({f'c/{i}.jpg': b'x' for i in range(4)}), tmp_path/'n', limits={'max_files': 3})
    # A highly compressible member (a zip bomb in miniature) is cut at the cap while it is written.
    out = lesson.safe_extract(zip_of({'c/bomb.jpg': b'\0' * 5_000_000, 'c/ok.jpg': b'x'}), tmp_path/'b',
                              limits={'max_file_bytes': 100_000})
    assert out.skipped == [('c/bomb.jpg', 'over 0 MB')] and not (tmp_path/'b'/'c'/'bomb.jpg').exists()
    with pytest.raises(lesson.ZipImportError, match='unpacks to more than'):
        lesson.safe_extract(zip_of({'c/a.jpg': b'\0' * 600_000, 'c/b.jpg': b'\0' * 600_000}), tmp_path/'t',
                            limits={'max_total_bytes': 1_000_000})
    with pytest.raises(lesson.ZipImportError, match='the limit is 0 MB'):
        lesson.safe_extract(b'x' * 2000, tmp_path/'z', limits={'max_zip_bytes': 1000})


def test_not_a_zip_and_password_zips_say_what_to_do(tmp_path):
    with pytest.raises(lesson.ZipImportError, match='not a zip'):
        lesson.safe_extract(b'\x89PNG not a zip', tmp_path/'p')
    data = bytearray(zip_of({'cat/1.jpg': b'x'}))
    data[6] |= 1            # the "encrypted" flag in the member's local header
    data[data.find(b'PK\x01\x02') + 8] |= 1     # and in the central directory
    with pytest.raises(lesson.ZipImportError, match='password'):
        lesson.safe_extract(bytes(data), tmp_path/'e')


@pytest.mark.parametrize('top', ['', 'mine/', 'Photos/mine/'])
def test_import_zip_finds_the_class_folders(tmp_path, raw_photos, top):
    lesson.import_zip(photos_zip(raw_photos, top), tmp_path/'ds', name='photos.zip')
    assert lesson.counts(tmp_path/'ds') == {'cat': 3, 'coffee': 3, 'rocket': 3}
    sources = {r['source'] for r in read_manifest(tmp_path/'ds')}
    assert 'photos.zip:cat/00.jpg' in sources and not any('pictaxon-zip-' in s for s in sources)
    again = lesson.import_zip(photos_zip(raw_photos, top), tmp_path/'ds', name='photos.zip')
    assert again.counts == {} and len(read_manifest(tmp_path/'ds')) == 9


def test_import_zip_checks_every_file_like_gather(tmp_path, raw_photos):
    data = zip_of({'mine/cat/00.jpg': (raw_photos/'cat'/'00.jpg').read_bytes(), 'mine/cat/page.jpg': b'<html>',
                   'mine/cat/.DS_Store': b'junk', '__MACOSX/mine/cat/._00.jpg': b'junk',
                   'mine/dog/00.jpg': (raw_photos/'cat'/'00.jpg').read_bytes()})
    report = lesson.import_zip(data, tmp_path/'ds', name='photos.zip')
    statuses = {r['source']: r['status'] for r in read_manifest(tmp_path/'ds')}
    assert statuses['photos.zip:cat/page.jpg'].startswith('rejected:')
    # The same photo under two classes: gather puts both copies aside for a person to look at.
    assert statuses['photos.zip:cat/00.jpg'].startswith('quarantined:ambiguous_label')
    assert statuses['photos.zip:dog/00.jpg'].startswith('quarantined:ambiguous_label')
    assert not any('DS_Store' in s or 'MACOSX' in s for s in statuses)


# --- the gather step: offline, refused, unattended ------------------------------------------------------

def test_offline_says_one_sentence_and_goes_on_with_the_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('IN_TEST', raising=False)
    monkeypatch.setattr(lesson, 'search_reachable', lambda *a, **k: False)
    source = lesson.gather_photos('data/mine', ['grizzly bear', 'black bear'])
    message = source.message_text
    assert message.startswith('Image search cannot be reached') and message.count('. ') == 0 and message.endswith('.')
    assert 'upload a zip' in message
    assert source.dataset == Path('data/sample') and lesson.counts('data/sample') == {'cat': 16, 'coffee': 19, 'rocket': 16}
    assert 'Traceback' not in repr(source)


def test_unattended_takes_the_sample_without_searching(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('IN_TEST', '1')
    real_gather = lesson.gather
    def no_search(dest, classes=(), **options):
        assert options.get('from_folder'), 'searched while unattended'
        return real_gather(dest, classes, **options)
    monkeypatch.setattr(lesson, 'search_reachable', lambda *a, **k: pytest.fail('searched while unattended'))
    monkeypatch.setattr(lesson, 'gather', no_search)
    assert lesson.gather_photos('data/mine', ['a', 'b']).dataset == Path('data/sample')


def test_rate_limited_search_says_so_without_a_traceback(tmp_path, monkeypatch, capsys):
    from ddgs.exceptions import RatelimitException
    class Refusing:
        def images(self, *a, **k): raise RatelimitException('202 Ratelimit')
    real_gather = lesson.gather
    monkeypatch.setattr(lesson, 'gather', lambda *a, **k: real_gather(*a, **{**k, 'search_client': Refusing(), 'backoff': 0}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('IN_TEST', raising=False)
    source = lesson.gather_photos('data/mine', ['grizzly bear', 'black bear'], online=True)
    assert source.message_text.startswith('The image search did not answer (too many searches')
    assert source.dataset == Path('data/sample')
    assert 'Traceback' not in capsys.readouterr().out


def test_a_zip_uploaded_in_the_widget_switches_the_dataset(tmp_path, monkeypatch, raw_photos):
    monkeypatch.chdir(tmp_path)
    source = lesson.gather_photos('data/mine', ['a', 'b'], online=False)
    source.upload.value = (upload_item('photos.zip', photos_zip(raw_photos)),)
    assert source.dataset == Path('data/mine') and lesson.counts('data/mine') == {'cat': 3, 'coffee': 3, 'rocket': 3}
    assert source.upload.value == ()           # the bytes are let go
    assert source.receive('evil.zip', zip_of({'../x.jpg': b''})) is None and 'points outside' in repr(source)
    assert source.dataset == Path('data/mine')


def test_bears_are_offered_only_when_this_machine_has_them(tmp_path, monkeypatch):
    monkeypatch.setenv('PICTAXON_SHARED', str(tmp_path/'nowhere'))
    monkeypatch.chdir(tmp_path)
    bears = lesson.find_bears()
    assert bears is None or (bears/'grizzly').is_dir()
    (tmp_path/'shared'/'datasets'/'bears'/'grizzly').mkdir(parents=True)
    monkeypatch.setenv('PICTAXON_SHARED', str(tmp_path/'shared'))
    assert lesson.find_bears() == tmp_path/'shared'/'datasets'/'bears'


# --- look, compare, link, take home, bring back -----------------------------------------------------------

def test_photo_grid_shows_every_class_with_counts(tmp_path, raw_photos):
    lesson.import_folder(raw_photos, tmp_path/'ds', source='sample')
    grid = lesson.photo_grid(tmp_path/'ds', per_class=2)
    page = grid._repr_html_()
    assert page.count('<img ') == 6 and page.count('data:image/jpeg;base64,') == 6
    assert '(3 photos)' in page and 'cat' in repr(grid)


def test_compare_reads_cards_and_model_paths(tmp_path):
    card = {'valid_accuracy': 0.5, 'n_valid': 2, 'valid_per_class': {'cat': {'recall': 0.0}}}
    (tmp_path/'m.json').write_text(json.dumps(card))
    table = lesson.compare(first=card, cleaned=tmp_path/'m.onnx')
    assert table.rows()[0] == ('accuracy', '50.0%', '50.0%')
    assert '<th>cleaned</th>' in table._repr_html_()


def test_app_link_uses_the_hub_prefix(monkeypatch):
    monkeypatch.delenv('JUPYTERHUB_SERVICE_PREFIX', raising=False)
    assert lesson.app_link('models/mine.json').url == '/voila/render/app.ipynb?model=models/mine.json'
    monkeypatch.setenv('JUPYTERHUB_SERVICE_PREFIX', '/user/ada/')
    link = lesson.app_link('models/a b.json')
    assert link.url == '/user/ada/voila/render/app.ipynb?model=models/a%20b.json' and 'target="_blank"' in link._repr_html_()


def test_model_query_is_read_only_inside_the_working_folder(tmp_path, monkeypatch):
    from pictaxon.app import ClassifierApp, model_from_query
    (tmp_path/'models').mkdir()
    (tmp_path/'models'/'mine.json').write_text('{}')
    (tmp_path/'secret.json').write_text('{}')
    monkeypatch.chdir(tmp_path/'models')
    assert model_from_query('model=mine.json') == tmp_path/'models'/'mine.json'
    for bad in ('../secret.json', str(tmp_path/'secret.json'), 'mine.pkl', 'missing.json'):
        with pytest.raises(Exception, match='not a model card'): model_from_query(f'model={bad}')
    monkeypatch.setenv('QUERY_STRING', 'model=../secret.json')
    app = ClassifierApp.from_path()
    assert app.model is None and 'not a model card' in app.model_info.value and app.upload.disabled


def test_downloads_round_trip_through_the_zip_upload(tmp_path, monkeypatch, raw_photos):
    monkeypatch.chdir(tmp_path)
    lesson.import_folder(raw_photos, 'data/mine', source='sample')
    (tmp_path/'data'/'mine'/'cleaning_log.jsonl').write_text('{}\n')
    (tmp_path/'models').mkdir()
    for name in ('mine.onnx', 'mine.json'): (tmp_path/'models'/name).write_bytes(b'x')
    links = lesson.downloads('models/mine.json', 'data/mine')
    assert [p.as_posix() for p in links.paths] == ['models/mine.onnx', 'models/mine.json', 'downloads/mine-dataset.zip']
    page = links._repr_html_()
    assert 'href="downloads/mine-dataset.zip" download="mine-dataset.zip"' in page
    names = zipfile.ZipFile('downloads/mine-dataset.zip').namelist()
    assert {'mine/manifest.csv', 'mine/cleaning_log.jsonl', 'mine/cat/' + sorted(os.listdir('data/mine/cat'))[0]} <= set(names)
    lesson.import_zip(Path('downloads/mine-dataset.zip').read_bytes(), 'data/again', name='mine-dataset.zip')
    assert lesson.counts('data/again') == lesson.counts('data/mine')


def tiny_onnx(n_classes: int, side: int = 8) -> bytes:
    from onnx import TensorProto, helper
    nodes = [helper.make_node('Cast', ['images'], ['x'], to=TensorProto.FLOAT),
             helper.make_node('ReduceMean', ['x'], ['m'], axes=[1, 2], keepdims=0),
             helper.make_node('MatMul', ['m', 'w'], ['logits']),
             helper.make_node('Softmax', ['logits'], ['probabilities'], axis=-1)]
    graph = helper.make_graph(nodes, 'tiny', [helper.make_tensor_value_info('images', TensorProto.UINT8, ['n', side, side, 3])],
                              [helper.make_tensor_value_info('probabilities', TensorProto.FLOAT, ['n', n_classes])],
                              [helper.make_tensor('w', TensorProto.FLOAT, [3, n_classes], [0.1] * (3 * n_classes))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)], ir_version=8).SerializeToString()


def card_for(model: bytes, classes=('cat', 'coffee', 'rocket'), name='mine.onnx') -> bytes:
    return json.dumps({'classes': list(classes), 'transforms': {'presize': 8},
                       'files': {'onnx': {'name': name, 'sha256': sha256_bytes(model)}}}).encode()


def test_model_upload_takes_an_onnx_and_its_card(tmp_path):
    model = tiny_onnx(3)
    upload = lesson.ModelUpload(tmp_path/'models')
    upload.upload.value = (upload_item('mine.onnx', model), upload_item('mine.json', card_for(model)))
    assert upload.model == tmp_path/'models'/'mine.json' and (tmp_path/'models'/'mine.onnx').read_bytes() == model
    assert 'Open the app' in upload.status.value and upload.upload.value == ()
    assert lesson.import_model({'a.onnx': model, 'a.json': card_for(model, name='my-model.v2.onnx')}, tmp_path/'m') == tmp_path/'m'/'my-model_v2.json'
    assert lesson.import_model({'a.onnx': model, 'a.json': card_for(model, name='../../x.onnx')}, tmp_path/'m') == tmp_path/'m'/'x.json'
    other = tiny_onnx(3, side=9)      # another model with the same name: saved beside, never over
    card = json.loads(card_for(other, name='mine.onnx')); card['transforms'] = {'presize': 9}
    assert lesson.import_model({'mine.onnx': other, 'mine.json': json.dumps(card).encode()}, tmp_path/'models') == tmp_path/'models'/'mine-2.json'
    assert (tmp_path/'models'/'mine.onnx').read_bytes() == model


@pytest.mark.parametrize('files, message', [
    ({'mine.pkl': b'\x80\x04K\x01.', 'mine.json': b'{}'}, 'runs any code'),
    ({'mine.pt': b'PK', 'mine.json': b'{}'}, 'runs any code'),
    ({'mine.onnx': b'x'}, 'Choose two files'),
    ({'mine.onnx': b'x', 'mine.json': b'not json'}, 'not a model card'),
    ({'mine.onnx': b'x', 'mine.json': b'{"classes": ["a"]}'}, 'not a pictaxon model card'),
])
def test_model_upload_refuses_what_it_cannot_trust(tmp_path, files, message):
    with pytest.raises(lesson.ModelImportError, match=message): lesson.import_model(files, tmp_path)
    assert not list(tmp_path.iterdir())


def test_model_upload_checks_the_sha256_and_that_it_runs(tmp_path):
    model = tiny_onnx(3)
    with pytest.raises(lesson.ModelImportError, match='sha256'):
        lesson.import_model({'m.onnx': tiny_onnx(2), 'm.json': card_for(model)}, tmp_path)
    with pytest.raises(lesson.ModelImportError, match='do not belong together'):
        lesson.import_model({'m.onnx': tiny_onnx(2), 'm.json': card_for(tiny_onnx(2))}, tmp_path)
    with pytest.raises(lesson.ModelImportError, match='could not run'):
        lesson.import_model({'m.onnx': b'junk', 'm.json': card_for(b'junk')}, tmp_path)
    assert not list(tmp_path.iterdir())


# --- the committed lesson ---------------------------------------------------------------------------------

def lesson_cells():
    return json.loads((ROOT/'lesson.ipynb').read_text(encoding='utf-8'))['cells']


def test_the_saved_lesson_shows_what_each_step_did():
    cells = [c for c in lesson_cells() if c['cell_type'] == 'code']
    text = json.dumps(cells)
    assert 'Traceback' not in text and '"output_type": "error"' not in text
    quiet = [c for c in cells if not c['outputs']]
    # Only the imports, the settings and the cells behind a flag (off by default) print nothing.
    assert all(s in ''.join(c['source']) for c, s in zip(quiet, ['import', 'CLASSES', 'USE_FASTAI_CLEANER', 'USE_FASTAI_CLEANER', 'FINE_TUNE'])), \
        [''.join(c['source'])[:40] for c in quiet]
    assert 'application/vnd.jupyter.widget-view+json' not in text     # a saved widget view shows "model not found"
    assert 'Image search cannot be reached' in text and 'data:image/jpeg;base64' in text


def test_the_readme_opens_with_the_set_up_and_both_binder_badges():
    readme = (ROOT/'README.md').read_text(encoding='utf-8')
    setup = readme.split('```bash\n', 1)[1].split('```', 1)[0]
    assert [line.split()[:2] for line in setup.strip().splitlines()] == [['make', 'app'], ['make', 'test']]
    badges = [line for line in readme.splitlines() if 'mybinder.org/v2/gh/' in line]
    before_tour = readme.split('## A tour')[0]
    assert readme.index('## Set up') < readme.index('mybinder.org/v2/gh/')      # the two commands come first
    assert 'urlpath=voila%2Frender%2Fapp.ipynb' in badges[0] and 'lab%2Ftree%2Flesson.ipynb' in before_tour
    assert ' GB' in readme.split('## A tour')[0]          # how much disk the install takes
