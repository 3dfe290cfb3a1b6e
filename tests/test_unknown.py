""""None of these": pictaxon.unknown's calibration, on made-up features and (where ../shared is) on real photos."""
import json, time
import numpy as np
import pytest
from pictaxon.core import PictaxonError
from pictaxon.unknown import fit_unknown, is_unknown, unknown_scores

CLASSES = ['black', 'grizzly', 'teddy']


def clouds(rng, centres, n, spread=0.8):
    "Non-negative feature rows (like pooled ReLU features) around each of `centres`, `n` per centre."
    return np.concatenate([np.abs(c + rng.normal(scale=spread, size=(n, len(c)))) for c in centres]).astype(np.float32)


@pytest.fixture(scope='module')
def made_up():
    rng = np.random.default_rng(1)
    base = np.abs(rng.normal(size=(8, 128))) * 2
    train, labels = clouds(rng, base[:3], 50), np.repeat([0, 1, 2], 50)
    return dict(rng=rng, base=base, train=train, labels=labels, calibration=fit_unknown(train, labels, CLASSES))


def test_flags_other_things_not_new_photos_of_the_classes(made_up):
    rng, base, calibration = made_up['rng'], made_up['base'], made_up['calibration']
    same, other = clouds(rng, base[:3], 100), clouds(rng, base[3:], 60)
    assert is_unknown(calibration, same).mean() <= 0.02
    assert is_unknown(calibration, other).mean() >= 0.95
    assert np.median(unknown_scores(calibration, same)) < 1.0 < calibration['threshold'] < np.median(unknown_scores(calibration, other))


def test_calibration_is_plain_json(made_up):
    calibration = made_up['calibration']
    assert json.loads(json.dumps(calibration)) == calibration
    assert calibration['classes'] == CLASSES and calibration['dim'] == 128 and len(calibration['scales']) == 3
    restored = json.loads(json.dumps(calibration))
    x = made_up['train'][:5]
    assert np.allclose(unknown_scores(restored, x), unknown_scores(calibration, x))


def test_labels_as_names_and_single_rows(made_up):
    by_name = fit_unknown(made_up['train'], np.array(CLASSES)[made_up['labels']], CLASSES)
    assert by_name['centroids'] == made_up['calibration']['centroids']
    assert is_unknown(by_name, made_up['train'][0]).shape == (1,)
    with pytest.raises(PictaxonError, match='not one of the classes'):
        fit_unknown(made_up['train'][:2], ['black', 'polar'], CLASSES)


def test_no_calibration_flags_nothing_and_wrong_size_is_refused(made_up):
    assert not is_unknown(None, np.ones((4, 128))).any() and len(is_unknown({}, np.ones((4, 128)))) == 4
    with pytest.raises(PictaxonError, match='do not belong together'):
        unknown_scores(made_up['calibration'], np.ones((2, 64)))
    with pytest.raises(PictaxonError, match='calibration method'):
        unknown_scores({'method': 'energy'}, np.ones((2, 64)))


def test_class_without_photos_and_scale_invariance(made_up):
    labels = made_up['labels'].copy(); labels[labels == 2] = 1          # no teddy photos at all
    calibration = fit_unknown(made_up['train'], labels, CLASSES)
    assert calibration['classes'] == ['black', 'grizzly']
    x = made_up['train'][:10]
    assert np.allclose(unknown_scores(calibration, x), unknown_scores(calibration, x * 7.5), atol=1e-5)


def test_costs_microseconds(made_up):
    calibration, x = made_up['calibration'], made_up['train'][:1]
    start = time.perf_counter()
    for _ in range(200): is_unknown(calibration, x)
    assert (time.perf_counter() - start) / 200 < 0.005


def test_real_photos_bears_against_houseplants(bears_dir, houseplants_dir):
    "The bench's headline on the cached frozen features: unrelated photos flagged, validation photos not."
    from pictaxon.features import dataset_features, valid_indices
    bears = dataset_features(bears_dir, progress=False)
    plants = dataset_features(houseplants_dir, progress=False)
    for model, other in ((bears, plants), (plants, bears)):
        valid, _ = valid_indices(model.files, valid_pct=0.2, seed=42)
        train = np.setdiff1d(np.arange(len(model)), valid)
        calibration = fit_unknown(model.features[train], model.labels[train], model.classes)
        assert is_unknown(calibration, model.features[valid]).mean() <= 0.05
        assert is_unknown(calibration, other.features).mean() >= 0.90
