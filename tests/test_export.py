"""Export, load and predict: the model file round-trips through a fresh process; failures say why; bad photos
in a batch get their own error; the default model is there and good."""
import io, json, os, shutil, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pictaxon.export import (export_model, load_model, load_predictor, predict, card_path, ModelLoadError,
                             ModelVersionWarning, Prediction, library_versions)
from pictaxon.train import train
from test_train import make_photos, ONE_THREAD_ENV

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / 'models' / 'bears.pkl'
PICTAXON = str(Path(sys.executable).with_name('pictaxon'))


pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    root = make_photos(tmp_path_factory.mktemp('photos'))
    (root / 'manifest.csv').write_text('class,query,source,status,file,sha256,phash,width,height\n')
    return root


@pytest.fixture(scope='module')
def trained(photos):
    return train(photos, epochs=1, size=64, batch_size=4, progress=False)


@pytest.fixture(scope='module')
def exported(trained, tmp_path_factory):
    return export_model(trained, tmp_path_factory.mktemp('models') / 'photos.pkl', note='made by a test')


@pytest.fixture(scope='module')
def bears_model():
    if not DEFAULT_MODEL.exists():
        pytest.fail(f'The default model {DEFAULT_MODEL} is missing: run `make model`.')
    return load_model(DEFAULT_MODEL)


def test_card_describes_the_model(exported, photos):
    card = json.loads(card_path(exported).read_text())
    assert card['classes'] == ['cat', 'coffee'] and card['architecture'] == 'efficientnet_lite0'
    assert card['input_size'] == 64 and card['seed'] == 42 and card['epochs'] == 1
    assert card['valid_accuracy'] == 1.0 and set(card['valid_per_class']) == {'cat', 'coffee'}
    assert card['images_per_class'] == {'cat': 10, 'coffee': 10}
    assert card['dataset'] == str(photos.resolve())
    assert card['manifest_sha256'] == __import__('hashlib').sha256((photos / 'manifest.csv').read_bytes()).hexdigest()
    assert card['training_seconds'] > 0 and card['date'].startswith('20')
    assert card['versions'] == library_versions() and card['note'] == 'made by a test'
    assert sorted(p.name for p in exported.parent.iterdir()) == ['photos.json', 'photos.onnx', 'photos.pkl', 'photos.pt']   # no temporary left
    assert card['portable_file'] == 'photos.pt' and card['kind'] == 'fine-tuned'
    assert {k: v['name'] for k, v in card['files'].items()} == {'onnx': 'photos.onnx', 'pt': 'photos.pt', 'pkl': 'photos.pkl'}
    assert card['class_names'] == card['classes'] and set(card['transforms']) == {'presize', 'size', 'mean', 'std'}


def test_fresh_process_that_imports_only_pictaxon_predicts_the_same(trained, exported, photos):
    files = sorted(str(p) for p in photos.rglob('*.jpg') if '.quarantine' not in str(p))
    before = [p.probabilities for p in predict(trained, files)]
    code = ('import json, sys; from pictaxon.export import load_model, predict; '
            'm = load_model(sys.argv[1]); '
            'print(json.dumps([p.probabilities for p in predict(m, sys.argv[2:])]))')
    result = subprocess.run([sys.executable, '-c', code, str(exported), *files], capture_output=True, text=True,
                            timeout=180, env=ONE_THREAD_ENV, cwd='/')
    assert result.returncode == 0, result.stderr
    after = json.loads(result.stdout)
    assert [p[0][0] for p in after] == [p[0][0] for p in before] == ['cat'] * 10 + ['coffee'] * 10
    np.testing.assert_allclose([[q for _, q in p] for p in after], [[q for _, q in p] for p in before], atol=1e-5)
    assert 'only load' in result.stderr           # the pickle warning, said once


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match=r'There is no model file at .*nope\.pkl.*pictaxon train'):
        load_model(tmp_path / 'nope.pkl')


def test_text_file_is_not_a_model(tmp_path):
    (tmp_path / 'notes.pkl').write_text('bears: black, grizzly, teddy\n')
    with pytest.raises(ModelLoadError, match=r'not a model file exported by pictaxon or fastai \(it is a text file'):
        load_model(tmp_path / 'notes.pkl')


def test_damaged_model_file(exported, tmp_path):
    damaged = tmp_path / 'damaged.pkl'
    damaged.write_bytes(exported.read_bytes()[:100_000])
    with pytest.raises(ModelLoadError, match='not a model file exported by pictaxon or fastai'):
        load_model(damaged)


def _export_with_helper(tmp_path, photos) -> Path:
    """A learner whose labelling function lives in a helper module next to a user's script, exported there."""
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'bear_helpers.py').write_text('def label_from_folder(path):\n    return path.parent.name\n')
    (work / 'script.py').write_text(f'''
import bear_helpers
from fastai.vision.all import DataBlock, ImageBlock, CategoryBlock, RandomSplitter, Resize, get_image_files
from pictaxon.train import create_learner
block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=bear_helpers.label_from_folder,
                  splitter=RandomSplitter(0.5, seed=0), item_tfms=Resize(32))
learn = create_learner(block.dataloaders({str(photos)!r}, bs=4, num_workers=0), pretrained=False)
learn.export({str(work / "helper.pkl")!r})
''')
    result = subprocess.run([sys.executable, 'script.py'], cwd=work, capture_output=True, text=True, timeout=180,
                            env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stderr
    return work / 'helper.pkl'


def test_model_needing_a_function_that_cannot_be_imported(tmp_path, photos, monkeypatch):
    model = _export_with_helper(tmp_path, photos)
    monkeypatch.delitem(sys.modules, 'bear_helpers', raising=False)
    with pytest.raises(ModelLoadError, match=r'needs the Python module `bear_helpers`'):
        load_model(model)
    # The module is importable, but no longer has the function: name it, and say how to fix it.
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    (elsewhere / 'bear_helpers.py').write_text('def something_else(path):\n    return None\n')
    monkeypatch.syspath_prepend(str(elsewhere))
    with pytest.raises(ModelLoadError, match=r'needs the function `label_from_folder` from `bear_helpers`.*'
                                             r'Define or import `label_from_folder`.*retrain'):
        load_model(model)
    monkeypatch.delitem(sys.modules, 'bear_helpers', raising=False)


def test_card_with_other_versions_warns_naming_both(exported, tmp_path):
    other = tmp_path / 'other.pkl'
    shutil.copy(exported, other)
    card = json.loads(card_path(exported).read_text())
    card['versions'].update(fastai='2.7.0', torch='1.13.1')
    card_path(other).write_text(json.dumps(card))
    with pytest.warns(ModelVersionWarning) as caught:
        model = load_model(other)
    messages = [str(w.message) for w in caught if issubclass(w.category, ModelVersionWarning)]
    assert len(messages) == 2
    assert any('fastai 2.7.0' in m and f'fastai {library_versions()["fastai"]}' in m for m in messages)
    assert any('torch 1.13.1' in m for m in messages)
    assert model.classes == ['cat', 'coffee']


def test_matching_versions_load_without_version_warnings(exported):
    with warnings.catch_warnings():
        warnings.simplefilter('error', ModelVersionWarning)
        model = load_model(exported)
    assert model.card['classes'] == model.classes and model.path == exported


def test_predict_takes_paths_bytes_and_images_alone_or_in_lists(exported, photos):
    model = load_model(exported)
    path = photos / 'coffee' / '002.jpg'
    single = predict(model, path)
    assert len(single) == 1 and single[0].label == 'coffee' and single[0].source == str(path)
    mixed = predict(model, [str(path), path.read_bytes(), Image.open(path)], top_k=1)
    assert [p.label for p in mixed] == ['coffee'] * 3 and all(len(p.probabilities) == 1 for p in mixed)
    assert mixed[0].probability == pytest.approx(mixed[1].probability, abs=1e-6)
    full = single[0].probabilities
    assert [c for c, _ in full] == ['coffee', 'cat'] and sum(q for _, q in full) == pytest.approx(1.0, abs=1e-5)


# --- the default model ---------------------------------------------------------------------------------------

def _encode(image, fmt, **kw):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def test_predict_batch_with_bad_and_awkward_files(bears_model, bears_dir, tmp_path):
    """One error each for the unusable files; CMYK, alpha, 16-bit and EXIF-rotated photos are read as they look."""
    grizzly = Image.open(sorted((bears_dir / 'grizzly').glob('*.jpg'))[3]).convert('RGB')
    teddy = Image.open(sorted((bears_dir / 'teddy').glob('*.jpg'))[5]).convert('RGB')
    good = _encode(grizzly, 'JPEG', quality=95)
    files = {
        'corrupt.jpg': good[:len(good) // 3],
        'page.jpg': b'<!DOCTYPE html><html><body>Access denied</body></html>',
        'cmyk.jpg': _encode(grizzly.convert('CMYK'), 'JPEG', quality=95),
        'alpha.png': _encode(Image.merge('RGBA', (*teddy.split(), Image.new('L', teddy.size, 255))), 'PNG'),
        'deep.png': _encode(Image.fromarray((np.asarray(grizzly.convert('L'), dtype=np.uint16) * 257)), 'PNG'),
        'rotated.jpg': _encode(grizzly.transpose(Image.Transpose.ROTATE_90), 'JPEG', quality=95,
                               exif=_orientation(6)),   # pixels on their side, EXIF says "turn me upright"
    }
    for name, data in files.items(): (tmp_path / name).write_bytes(data)
    paths = [tmp_path / name for name in files]
    results = {Path(p.source).name: p for p in predict(bears_model, paths)}
    assert [n for n, p in results.items() if not p.ok] == ['corrupt.jpg', 'page.jpg']
    assert 'truncated' in results['corrupt.jpg'].error and 'web page' in results['page.jpg'].error
    assert results['corrupt.jpg'].label is None and results['corrupt.jpg'].probabilities == []

    references = {'grizzly': grizzly, 'teddy': teddy, 'grey': grizzly.convert('L').convert('RGB'),
                  'sideways': grizzly.transpose(Image.Transpose.ROTATE_90)}
    ref = {name: dict(p.probabilities) for name, p in zip(references, predict(bears_model, list(references.values())))}
    def close(a, b, tol): return all(abs(a[c] - b[c]) <= tol for c in a)
    assert results['cmyk.jpg'].label == 'grizzly' and close(dict(results['cmyk.jpg'].probabilities), ref['grizzly'], 0.05)
    assert close(dict(results['alpha.png'].probabilities), ref['teddy'], 1e-4)
    assert close(dict(results['deep.png'].probabilities), ref['grey'], 0.02)
    # The sideways pixels give other probabilities than the upright photo; the EXIF-rotated file gives the upright ones.
    assert not close(ref['sideways'], ref['grizzly'], 0.01)
    assert close(dict(results['rotated.jpg'].probabilities), ref['grizzly'], 0.02)


def _orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def test_fast_path_matches_learn_predict(bears_model, bears_dir):
    files = [sorted((bears_dir / c).glob('*.jpg'))[7] for c in ['black', 'grizzly', 'teddy']]
    fast = predict(bears_model, files)
    for f, p in zip(files, fast):
        label, _, probs = bears_model.learner.predict(f)
        assert p.label == label
        np.testing.assert_allclose([dict(p.probabilities)[c] for c in bears_model.classes], probs.numpy(), atol=1e-4)


def test_default_model_card_and_size():
    card = json.loads(card_path(DEFAULT_MODEL).read_text())
    assert card['classes'] == ['black', 'grizzly', 'teddy'] and card['architecture'] == 'efficientnet_lite0'
    assert card['valid_accuracy'] >= 0.97
    assert card['pretrained'] is True and card['n_valid'] >= 80
    assert DEFAULT_MODEL.stat().st_size < 25 * 1024**2
    assert (DEFAULT_MODEL.parent / 'bears_report' / 'confusion_matrix.png').exists()


def test_cli_predict_table_json_and_exit_status(bears_dir, tmp_path):
    folder = tmp_path / 'mixed'
    folder.mkdir()
    for f in sorted((bears_dir / 'teddy').glob('*.jpg'))[:3]: shutil.copy(f, folder / f.name)
    (folder / 'broken.jpg').write_text('<html>not a photo</html>')
    run = lambda *args: subprocess.run([PICTAXON, 'predict', str(DEFAULT_MODEL), *args], capture_output=True,
                                       text=True, timeout=180, env=ONE_THREAD_ENV)
    table = run(str(folder), '--top-k', '2')
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert len(lines) == 4 and sum('  teddy  ' in l for l in lines) == 3
    assert any('broken.jpg  ERROR: This is a web page' in l for l in lines)
    assert '3 classified, 1 unreadable' in table.stderr
    rows = [json.loads(l) for l in run(str(folder), '--json', '--top-k', '3').stdout.splitlines()]
    assert [r['label'] for r in rows if r['error'] is None] == ['teddy'] * 3
    assert all(len(r['probabilities']) == 3 for r in rows if r['error'] is None)
    nothing = run(str(folder / 'broken.jpg'))
    assert nothing.returncode == 1 and '0 classified, 1 unreadable' in nothing.stderr


# The serving engines: ONNX Runtime (MODEL.onnx) first, the portable copy (MODEL.pt), the learner; none imports fastai
# unless it is the learner.

def test_default_model_served_by_onnx_and_by_its_portable_copy_predicts_like_the_learner(bears_model, bears_dir):
    photos = [str(p) for p in sorted(bears_dir.glob('*/*.jpg'))[::23]]
    learner_probs = [dict(p.probabilities) for p in predict(bears_model, photos)]
    code = ('import json, sys; from pictaxon.export import load_predictor, predict; '
            'm = load_predictor(sys.argv[1], engine=sys.argv[2]); '
            'print(json.dumps({"fastai": "fastai" in sys.modules, "learner": m.learner is not None, "engine": m.engine, '
            '"probs": [dict(p.probabilities) for p in predict(m, sys.argv[3:])]}))')
    for engine in ('onnx', 'torch'):
        result = subprocess.run([sys.executable, '-c', code, str(DEFAULT_MODEL), engine, *photos], capture_output=True,
                                text=True, timeout=180, env=ONE_THREAD_ENV, cwd='/')
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert out['fastai'] is False and out['learner'] is False and out['engine'] == engine, 'served without fastai'
        classes = bears_model.classes
        np.testing.assert_allclose([[p[c] for c in classes] for p in out['probs']],
                                   [[p[c] for c in classes] for p in learner_probs], atol=1e-5)


def test_default_model_card_vouches_for_each_engine_file():
    from pictaxon.core import sha256_file
    card = json.loads(card_path(DEFAULT_MODEL).read_text())
    assert card['kind'] == 'fine-tuned' and card['class_names'] == card['classes']
    assert card['transforms'] == {'presize': 280, 'size': 224, 'mean': [0.5] * 3, 'std': [0.5] * 3}
    for kind in ('onnx', 'pt', 'pkl'):
        assert sha256_file(DEFAULT_MODEL.with_suffix('.' + kind)) == card['files'][kind]['sha256']
    assert card['onnx_agreement']['max_difference'] <= 1e-4


def test_load_predictor_picks_a_vouched_engine_and_explains_a_bad_portable_file(exported, tmp_path):
    plain = tmp_path / 'plain.pkl'
    shutil.copy(exported, plain)
    assert load_predictor(plain).learner is not None          # no card, nothing beside it: the fastai learner
    assert load_predictor(exported).learner is None           # the card vouches for photos.onnx: ONNX Runtime
    assert load_predictor(exported).engine == 'onnx'
    (tmp_path / 'plain.pt').write_text('<html>not a model</html>')
    with pytest.warns(UserWarning, match='Not using plain.pt'):                    # never unpickled unvouched
        assert load_predictor(plain).engine == 'fastai'
    with pytest.raises(ModelLoadError, match='not a pictaxon model file'): load_predictor(tmp_path / 'plain.pt')
    import torch
    torch.save({'weights': torch.zeros(2)}, tmp_path / 'plain.pt')
    with pytest.raises(ModelLoadError, match='not a portable pictaxon model'): load_predictor(tmp_path / 'plain.pt')
    with pytest.raises(ModelLoadError, match='no model file'): load_predictor(tmp_path / 'missing.pt')
