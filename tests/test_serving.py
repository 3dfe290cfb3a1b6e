"""Serving: the torch-free predictor. ONNX Runtime runs every model with a vouched .onnx; a card ties each engine
file to its model by sha256; wrong inputs (a photo for a model, a card that is not the model's) say so; "none of
these", PDF pages and display names reach `predict` and `pictaxon predict`."""
import io, json, os, shutil, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pictaxon.serving import (load_predictor, predict, square_crops, Prediction, Predictor, ModelLoadError,
                              EngineFileWarning, read_card)
from test_train import make_photos, ONE_THREAD_ENV

ROOT = Path(__file__).resolve().parents[1]
BEARS = ROOT / 'models' / 'bears.json'
PICTAXON = str(Path(sys.executable).with_name('pictaxon'))

pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp('photos'))


@pytest.fixture(scope='module')
def learn(photos):
    from pictaxon.train import train
    return train(photos, epochs=1, size=64, batch_size=4, progress=False)


@pytest.fixture(scope='module')
def model_dir(learn, tmp_path_factory):
    from pictaxon.export import export_model
    folder = tmp_path_factory.mktemp('models')
    export_model(learn, folder / 'photos.pkl', class_names=['a cat', 'a cup of coffee'])
    return folder


@pytest.fixture
def model(model_dir, tmp_path):
    """A fresh copy of the exported tiny model (card, .onnx, .pt, .pkl) that a test may tamper with."""
    for f in model_dir.iterdir(): shutil.copy(f, tmp_path / f.name)
    return tmp_path / 'photos.json'


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, 'JPEG', quality=90)
    return buffer.getvalue()


def _run(*args):
    return subprocess.run([PICTAXON, *map(str, args)], capture_output=True, text=True, timeout=180, env=ONE_THREAD_ENV)


# --- the light engine ----------------------------------------------------------------------------------------

def test_serving_a_model_imports_neither_torch_nor_fastai(photos):
    files = [str(photos / 'cat' / '000.jpg'), str(photos / 'coffee' / '000.jpg')]
    code = ('import json, sys; from pictaxon.serving import load_predictor, predict; '
            'p = load_predictor(sys.argv[1]); r = predict(p, sys.argv[2:]); '
            'print(json.dumps({"engine": p.engine, "ok": [x.ok for x in r], '
            '"torch": "torch" in sys.modules, "fastai": "fastai" in sys.modules}))')
    result = subprocess.run([sys.executable, '-c', code, str(BEARS), *files], capture_output=True, text=True,
                            timeout=120, env=ONE_THREAD_ENV, cwd='/')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {'engine': 'onnx', 'ok': [True, True], 'torch': False, 'fastai': False}


def test_square_crops_are_fastais_crop_to_the_bit():
    from fastai.vision.all import Resize, PILImage
    rng = np.random.RandomState(1)
    for h, w in [(97, 130), (301, 211), (64, 64), (280, 281), (1000, 37)]:
        image = Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8))
        theirs = np.asarray(Resize(56, method='crop')(PILImage(image), split_idx=1))
        np.testing.assert_array_equal(square_crops([image], 56)[0], theirs)


def test_export_writes_an_onnx_model_that_agrees_with_the_learner(model, learn, photos):
    card = read_card(model)
    assert card['kind'] == 'fine-tuned' and sorted(card['files']) == ['onnx', 'pkl', 'pt']
    assert card['transforms']['presize'] >= card['transforms']['size'] == 64
    assert card['class_names'] == ['a cat', 'a cup of coffee'] and card['onnx_agreement']['max_difference'] <= 1e-4
    files = sorted(str(p) for p in photos.glob('*/*.jpg'))
    reference = predict(learn, files)
    for engine in ('onnx', 'torch', 'fastai'):
        predictor = load_predictor(model, engine=engine)
        assert isinstance(predictor, Predictor) and predictor.engine == engine
        found = predict(predictor, files)
        assert [p.label for p in found] == [p.label for p in reference]
        np.testing.assert_allclose([[q for _, q in sorted(p.probabilities)] for p in found],
                                   [[q for _, q in sorted(p.probabilities)] for p in reference], atol=1e-4)
    probabilities, features = load_predictor(model).run([Image.open(files[0])])
    assert probabilities.shape == (1, 2) and features.shape == (1, 1280)


def test_an_export_that_does_not_agree_is_not_written(learn, tmp_path):
    from pictaxon.export import export_onnx, serving_transforms, plain_network, ExportMismatch
    with pytest.raises(ExportMismatch, match='was not written'):
        export_onnx(plain_network(learn.model), serving_transforms(learn), tmp_path / 'm.onnx', classes=['cat', 'coffee'],
                    reference=np.full((7, 2), 0.5), tolerance=1e-4)
    assert not (tmp_path / 'm.onnx').exists()


def test_old_imports_from_export_are_the_serving_ones():
    import pictaxon.export as export, pictaxon.serving as serving
    assert export.predict is serving.predict and export.Prediction is serving.Prediction
    assert export.load_predictor is serving.load_predictor and export.ModelLoadError is serving.ModelLoadError


def test_default_model_is_served_by_onnx_and_labels_bears(bears_dir):
    predictor = load_predictor(ROOT / 'models' / 'bears.pkl')      # naming the .pkl picks the lightest vouched engine
    assert predictor.engine == 'onnx' and predictor.classes == ['black', 'grizzly', 'teddy']
    files = [f for c in ('black', 'grizzly', 'teddy') for f in sorted((bears_dir / c).glob('*.jpg'))[5:8]]
    assert [p.label for p in predict(predictor, files)] == ['black'] * 3 + ['grizzly'] * 3 + ['teddy'] * 3


# --- issue 9 item 7: every engine file is tied to its model --------------------------------------------------

class _RunsCode:
    """Unpickling this makes a folder: the proof that a file was unpickled."""
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.mkdir, (self.marker,))


def test_a_pt_the_card_does_not_vouch_for_is_never_unpickled(model_dir, learn, tmp_path):
    """The issue's case: an old re.pt beside a new re.pkl (exported without a portable copy)."""
    import torch
    from pictaxon.export import export_model
    export_model(learn, tmp_path / 're.pkl', portable=False)
    marker = tmp_path / 'unpickled'
    torch.save({'format': 'pictaxon-portable-1', 'classes': ['dog', 'cat'], 'trap': _RunsCode(marker)}, tmp_path / 're.pt')
    for named in ('re.pkl', 're.json', 're'):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            predictor = load_predictor(tmp_path / named)
        assert predictor.engine == 'onnx' and predictor.classes == ['cat', 'coffee']
        assert not marker.exists()
    (tmp_path / 're.onnx').unlink()          # without the ONNX engine: still never the .pt, and a warning says why
    (tmp_path / 're.json').write_text(json.dumps({k: v for k, v in read_card(tmp_path / 're.json').items() if k != 'files'}))
    with pytest.warns(EngineFileWarning, match='Not using re.pt'):
        assert load_predictor(tmp_path / 're.pkl').engine == 'fastai'
    assert not marker.exists()


@pytest.mark.parametrize('stale', ['onnx', 'pt'])
def test_a_stale_or_foreign_engine_file_is_refused(model, model_dir, stale, tmp_path):
    target = model.with_suffix('.' + stale)
    target.write_bytes(target.read_bytes() + b'\0')                  # any other bytes than the card's
    with pytest.raises(ModelLoadError, match=rf'photos\.{stale} is not the file its card photos\.json describes.*stale or foreign'):
        load_predictor(model if stale == 'onnx' else model.with_suffix('.pt'))


def test_an_engine_file_the_card_does_not_list_is_refused_when_named(model):
    card = read_card(model)
    del card['files']['pt']
    model.write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match=r'photos\.pt is not one of the files its card photos\.json lists'):
        load_predictor(model.with_suffix('.pt'))
    assert load_predictor(model.with_suffix('.pkl')).engine == 'onnx'


# --- issue 9 item 12: model-side messages ---------------------------------------------------------------------

def test_a_photo_where_the_model_goes_says_the_arguments_look_swapped(photos, tmp_path):
    photo = photos / 'cat' / '000.jpg'
    with pytest.raises(ModelLoadError, match='is a photo \\(JPEG\\), not a model: the arguments look swapped'):
        load_predictor(photo)
    renamed = tmp_path / 'photo.pkl'
    shutil.copy(photo, renamed)
    with pytest.raises(ModelLoadError, match='the arguments look swapped'):
        load_predictor(renamed)
    result = _run('predict', photo, BEARS)
    assert result.returncode == 1
    assert 'the arguments look swapped' in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.parametrize('text, says', [('["cat", "coffee"]', 'holds a JSON list, not an object'),
                                        ('"photos"', 'holds a JSON str, not an object'),
                                        ('{"classes": ["cat", "coff', 'is not valid JSON')])
def test_a_card_that_is_not_a_json_object(model, text, says):
    model.write_text(text)
    with pytest.raises(ModelLoadError, match=says):
        load_predictor(model)
    result = _run('predict', model, ROOT / 'README.md')
    assert result.returncode == 1 and says in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.parametrize('engine', ['onnx', 'torch', 'fastai'])
def test_a_card_whose_classes_are_not_the_models_outputs(model, engine):
    card = read_card(model)
    model.write_text(json.dumps({**card, 'classes': ['black', 'grizzly', 'teddy']}))
    with pytest.raises(ModelLoadError, match='the card belongs to another model'):
        load_predictor(model, engine=engine)


# --- issue 11: "none of these", PDF pages, display names -----------------------------------------------------

def _calibrate(model, threshold):
    """A real calibration from the model's own features, with the margin set to `threshold`."""
    from pictaxon.unknown import fit_unknown
    predictor = load_predictor(model)
    card = read_card(model)
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 256, (80, 80, 3), dtype=np.uint8)) for _ in range(6)]
    _, features = predictor.run(images)
    calibration = fit_unknown(features, [0, 1] * 3, predictor.classes, margin=threshold)
    model.write_text(json.dumps({**card, 'unknown': calibration}))


def test_none_of_these_in_predict_and_the_cli(model, photos):
    files = [photos / 'cat' / '000.jpg', photos / 'coffee' / '000.jpg']
    _calibrate(model, threshold=-1.0)              # everything is further than "-1": all unknown
    flagged = predict(load_predictor(model), files)
    assert [p.unknown for p in flagged] == [True, True] and flagged[0].label == 'cat'   # the closest class stays
    table = _run('predict', model, *files)
    assert table.returncode == 0, table.stderr
    assert 'Not one of: a cat, a cup of coffee (closest: a cat ' in table.stdout
    assert '2 not one of the classes' in table.stderr
    rows = [json.loads(l) for l in _run('predict', model, *files, '--json').stdout.splitlines()]
    assert [(r['unknown'], r['name'], r['label']) for r in rows] == [(True, 'a cat', 'cat'), (True, 'a cup of coffee', 'coffee')]
    _calibrate(model, threshold=1e9)               # nothing is that far: none unknown
    assert [p.unknown for p in predict(load_predictor(model), files)] == [False, False]


def test_display_names_in_predictions_and_the_table(model, photos):
    result = predict(load_predictor(model), [photos / 'coffee' / '001.jpg'])[0]
    assert (result.label, result.name) == ('coffee', 'a cup of coffee')
    assert [c for c, _ in result.probabilities] == ['coffee', 'cat']          # ids, for programs
    table = _run('predict', model, photos / 'coffee' / '001.jpg')
    assert '  a cup of coffee  ' in table.stdout and '(a cat 0.' in table.stdout


def test_pdf_pages_are_predicted_one_by_one(model, photos, tmp_path):
    pages = [Image.open(photos / c / '000.jpg').convert('RGB') for c in ('cat', 'coffee', 'cat')]
    pages[0].save(tmp_path / 'scan.pdf', save_all=True, append_images=pages[1:])
    Image.new('RGB', (20, 20)).save(tmp_path / 'long.pdf', save_all=True, append_images=[Image.new('RGB', (20, 20))] * 60)
    results = predict(load_predictor(model), [tmp_path / 'scan.pdf', tmp_path / 'long.pdf', photos / 'cat' / '001.jpg'])
    assert [(Path(p.source).name, p.page, p.pages) for p in results] == [
        ('scan.pdf', 1, 3), ('scan.pdf', 2, 3), ('scan.pdf', 3, 3), ('long.pdf', None, None), ('001.jpg', None, None)]
    assert [p.label for p in results[:3]] == ['cat', 'coffee', 'cat']
    assert not results[3].ok and '61 pages' in results[3].error
    folder = tmp_path / 'inbox'
    folder.mkdir()
    shutil.copy(tmp_path / 'scan.pdf', folder / 'scan.pdf')
    rows = [json.loads(l) for l in _run('predict', model, folder, '--json').stdout.splitlines()]
    assert [(r['page'], r['pages'], r['label']) for r in rows] == [(1, 3, 'cat'), (2, 3, 'coffee'), (3, 3, 'cat')]
    table = _run('predict', model, folder).stdout
    assert 'scan.pdf#page=2  a cup of coffee' in table


def test_an_engine_that_does_not_exist_is_named(model):
    with pytest.raises(ModelLoadError, match=r"There is no engine 'tensorflow'; pictaxon runs models with onnx, torch, fastai"):
        load_predictor(model, engine='tensorflow')
