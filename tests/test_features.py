"""Frozen features and the quick model: ONNX extractor, the sha256 cache, dataset_features, train_quick and its card."""
import json, os, shutil, subprocess, sys, tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pictaxon.core import PictaxonError, sha256_file, write_manifest
from pictaxon.train import sample_dataset

PICTAXON = str(Path(sys.executable).with_name('pictaxon'))
# One extractor for every test run on this machine (building it costs a torch export, about 10 s).
CACHE = Path(tempfile.gettempdir()) / f'pictaxon-test-cache-{os.getuid()}'


@pytest.fixture(autouse=True)
def test_cache(monkeypatch):
    monkeypatch.setenv('PICTAXON_CACHE', str(CACHE))
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    return CACHE


@pytest.fixture
def photos(tmp_path):
    return sample_dataset(tmp_path / 'photos', per_class=8)


def env():
    return {**os.environ, 'PICTAXON_CACHE': str(CACHE), 'OMP_NUM_THREADS': '1'}


def test_features_of_every_photo_with_labels_and_relative_files(photos):
    from pictaxon.features import dataset_features, FEATURE_DIM
    fs = dataset_features(photos, progress=False)
    assert fs.classes == ['cat', 'coffee'] and fs.class_names == ['cat', 'coffee']
    assert fs.files[0] == 'cat/000.jpg' and fs.files[-1] == 'coffee/007.jpg'
    assert fs.labels.tolist() == [0] * 8 + [1] * 8
    assert fs.features.shape == (16, FEATURE_DIM) and fs.features.dtype == np.float32
    assert fs.sha256 == [sha256_file(photos / f) for f in fs.files]
    assert np.isfinite(fs.features).all() and fs.features.std() > 0


def test_only_new_photos_are_computed(photos, tmp_path):
    from pictaxon.features import dataset_features, FeatureCache
    cache = FeatureCache(tmp_path / 'cache')               # empty: the machine-wide one may know these photos
    first = dataset_features(photos, progress=False, cache=cache)
    assert first.computed == 16
    again = dataset_features(photos, progress=False, cache=cache)
    assert again.computed == 0 and np.array_equal(again.features, first.features)
    for i in range(3):
        Image.open(photos / 'cat' / f'00{i}.jpg').rotate(90).save(photos / 'cat' / f'new{i}.jpg')
    shutil.move(photos / 'cat' / '005.jpg', photos / 'coffee' / 'moved.jpg')     # relabelled: same bytes, cached
    after = dataset_features(photos, progress=False, cache=cache)
    assert after.computed == 3 and len(after) == 19
    assert after.labels[after.files.index('coffee/moved.jpg')] == 1


def test_a_damaged_cache_entry_is_computed_again_never_a_crash(photos, tmp_path):
    from pictaxon.features import dataset_features, FeatureCache
    cache = FeatureCache(tmp_path / 'cache')
    first = dataset_features(photos, progress=False, cache=cache)
    damaged = cache.path(first.sha256[0])
    damaged.write_bytes(damaged.read_bytes()[:40])                  # cut short
    cache.path(first.sha256[1]).write_bytes(b'not numpy at all')
    np.save(cache.path(first.sha256[2]), np.zeros(7, np.float32))  # wrong shape
    again = dataset_features(photos, progress=False, cache=cache)
    assert again.computed == 3
    np.testing.assert_allclose(again.features, first.features, atol=1e-5)


def test_every_unusable_photo_is_left_out_and_named(photos):
    from pictaxon.features import dataset_features
    (photos / 'cat' / 'page.jpg').write_text('<html><body>404</body></html>')
    (photos / 'coffee' / 'cut.jpg').write_bytes((photos / 'coffee' / '000.jpg').read_bytes()[:200])
    (photos / 'coffee' / 'empty.png').write_bytes(b'')
    fs = dataset_features(photos, progress=False)
    assert len(fs) == 16
    assert [f for f, _ in fs.skipped] == ['cat/page.jpg', 'coffee/cut.jpg', 'coffee/empty.png']
    assert 'web page' in fs.skipped[0][1]


def test_onnx_features_equal_the_torch_body():
    import torch
    from pictaxon.features import FeatureExtractor, square_crops
    from pictaxon.train import efficientnet_lite0, efficientnet_body
    from skimage import data
    images = [Image.fromarray(data.chelsea()), Image.fromarray(data.astronaut()).resize((97, 211))]
    onnx_features = FeatureExtractor().features(images)
    body = efficientnet_body(efficientnet_lite0()).eval()
    x = torch.from_numpy(square_crops(images, 224)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad(): expected = body((x - 0.5) / 0.5).mean((2, 3)).numpy()
    np.testing.assert_allclose(onnx_features, expected, atol=1e-4)


def test_class_names_come_from_the_manifest(photos):
    from pictaxon.features import dataset_features
    write_manifest(photos, [{'class': 'Chelsea the cat', 'file': 'cat/000.jpg', 'status': 'kept'},
                            {'class': 'cup of coffee', 'file': 'coffee/003.jpg', 'status': 'kept'}])
    assert dataset_features(photos, progress=False).class_names == ['Chelsea the cat', 'cup of coffee']


def test_quick_model_is_written_to_the_model_contract(photos, tmp_path):
    import onnxruntime as ort
    from pictaxon.features import train_quick, square_crops, dataset_features
    result = train_quick(photos, tmp_path / 'models' / 'm.onnx', progress=False)
    card_file, onnx_file = tmp_path / 'models' / 'm.json', tmp_path / 'models' / 'm.onnx'
    assert result.path == card_file
    card = json.loads(card_file.read_text())
    assert card['kind'] == 'quick' and card['classes'] == ['cat', 'coffee'] and card['class_names'] == card['classes']
    assert card['files'] == {'onnx': {'name': 'm.onnx', 'sha256': sha256_file(onnx_file)}}
    assert card['transforms'] == {'presize': 224, 'size': 224, 'mean': [0.5] * 3, 'std': [0.5] * 3}
    assert card['n_valid'] == len(card['valid_files']) == 3 and card['n_train'] == 13
    assert card['valid_accuracy'] == 1.0 and set(card['valid_per_class']) == {'cat', 'coffee'}
    assert card['unknown']['dim'] == 1280
    assert sorted(p.name for p in (tmp_path / 'models' / 'm_report').iterdir()) == ['confusion_matrix.png', 'per_class.csv']
    session = ort.InferenceSession(str(onnx_file), providers=['CPUExecutionProvider'])
    (images,) = session.get_inputs()
    assert images.name == 'images' and images.type == 'tensor(uint8)' and images.shape[1:] == [224, 224, 3]
    assert [o.name for o in session.get_outputs()] == ['probabilities', 'features']
    fs = dataset_features(photos, progress=False)
    batch = square_crops([Image.open(photos / f).convert('RGB') for f in card['valid_files']], 224)
    probabilities, features = session.run(None, {'images': batch})
    assert probabilities.shape == (3, 2) and features.shape == (3, 1280)
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    expected = [fs.labels[fs.files.index(f)] for f in card['valid_files']]
    assert probabilities.argmax(1).tolist() == expected


def test_quick_model_loads_like_any_other_model(photos, tmp_path):
    serving = pytest.importorskip('pictaxon.serving', reason='pictaxon.serving is not there yet')
    from pictaxon.features import train_quick
    train_quick(photos, tmp_path / 'q', progress=False, report=False)
    predictor = serving.load_predictor(tmp_path / 'q.json')
    assert predictor.classes == ['cat', 'coffee'] and predictor.engine == 'onnx'
    [cat, cup] = serving.predict(predictor, [photos / 'cat' / '001.jpg', photos / 'coffee' / '001.jpg'])
    assert (cat.label, cup.label) == ('cat', 'coffee')


def test_valid_files_of_an_old_card_are_reused_after_cleaning(photos, tmp_path):
    from pictaxon.features import train_quick, read_valid_files
    before = train_quick(photos, tmp_path / 'before', progress=False, report=False).card
    valid = before['valid_files']
    gone, moved = valid[0], valid[1]
    (photos / gone).unlink()
    other = 'coffee' if moved.startswith('cat') else 'cat'
    shutil.move(photos / moved, photos / other / 'relabelled.jpg')
    source = next(p for p in sorted((photos / 'cat').iterdir()) if f'cat/{p.name}' not in valid)
    Image.open(source).rotate(180).save(photos / 'cat' / 'added.jpg')
    files, shas = read_valid_files(tmp_path / 'before.json')
    with pytest.warns(UserWarning, match=f'1 of the 3 validation photos.*{gone}'):
        after = train_quick(photos, tmp_path / 'after', valid_files=files, valid_sha256=shas, progress=False,
                            report=False).card
    assert set(after['valid_files']) == {valid[2], f'{other}/relabelled.jpg'}   # the relabelled one found by its bytes
    assert after['valid_missing'] == [gone]
    assert after['n_train'] == before['n_train'] + 1                  # the added photo trains
    assert after['valid_pct'] is None


def test_unusable_photos_are_listed_in_the_quick_card(photos, tmp_path):
    from pictaxon.features import train_quick
    (photos / 'cat' / 'page.jpg').write_text('<html>404</html>')
    (photos / 'coffee' / 'page.jpg').write_text('<html>404</html>')
    with pytest.warns(UserWarning, match=r'Left out 2 unusable.*cat/page\.jpg.*coffee/page\.jpg'):
        card = train_quick(photos, tmp_path / 'm', progress=False, report=False).card
    assert [s['file'] for s in card['skipped_files']] == ['cat/page.jpg', 'coffee/page.jpg']


def test_one_usable_class_is_refused(photos, tmp_path):
    from pictaxon.features import train_quick
    shutil.rmtree(photos / 'coffee')
    with pytest.raises(PictaxonError, match='at least two'):
        train_quick(photos, tmp_path / 'm', progress=False)


def test_quick_training_never_imports_torch(photos, tmp_path):
    from pictaxon.features import FeatureExtractor
    FeatureExtractor()                                   # built already (or now): the retrain path starts here
    code = ("import sys; from pictaxon.features import train_quick; "
            f"train_quick({str(photos)!r}, {str(tmp_path / 'm')!r}, progress=False); "
            "assert 'torch' not in sys.modules and 'fastai' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env(), timeout=120)
    assert result.returncode == 0, result.stderr


def test_cli_quick_then_retrain_on_the_same_validation_photos(photos, tmp_path):
    out = tmp_path / 'models' / 'photos'
    first = subprocess.run([PICTAXON, 'train', str(photos), '--out', str(out), '--quick'],
                           capture_output=True, text=True, env=env(), timeout=120)
    assert first.returncode == 0, first.stderr
    assert 'quick model: valid accuracy 100.0%' in first.stdout
    assert (tmp_path / 'models' / 'photos.onnx').exists() and (tmp_path / 'models' / 'photos_report').is_dir()
    second = subprocess.run([PICTAXON, 'train', str(photos), '--out', str(out) + '2.json', '--quick',
                             '--valid-from', str(out) + '.json'], capture_output=True, text=True, env=env(), timeout=120)
    assert second.returncode == 0, second.stderr
    old, new = (json.loads((tmp_path / 'models' / n).read_text()) for n in ('photos.json', 'photos2.json'))
    assert new['valid_files'] == old['valid_files'] and new['valid_pct'] is None


def test_valid_from_a_card_without_valid_files_says_what_to_do(photos, tmp_path):
    (tmp_path / 'old.json').write_text(json.dumps({'classes': ['cat', 'coffee']}))
    result = subprocess.run([PICTAXON, 'train', str(photos), '--out', str(tmp_path / 'm'), '--quick',
                             '--valid-from', str(tmp_path / 'old.json')], capture_output=True, text=True, env=env(), timeout=120)
    assert result.returncode == 1 and 'records no valid_files' in result.stderr


@pytest.mark.slow
def test_a_damaged_extractor_file_is_built_again(tmp_path, monkeypatch):
    from pictaxon.features import FeatureExtractor, extractor_path
    monkeypatch.setenv('PICTAXON_CACHE', str(tmp_path))
    extractor_path().parent.mkdir(parents=True, exist_ok=True)
    extractor_path().write_bytes(b'\x08\x07garbage')
    extractor = FeatureExtractor()
    assert extractor.features([Image.new('RGB', (50, 80), 'red')]).shape == (1, 1280)


@pytest.mark.slow
def test_quick_model_on_the_bears_matches_the_fine_tuned_one(bears_dir, tmp_path):
    from pictaxon.features import train_quick
    card = train_quick(bears_dir, tmp_path / 'bears', progress=False, report=False).card
    assert card['valid_accuracy'] >= 0.97 and card['n_valid'] == 83
