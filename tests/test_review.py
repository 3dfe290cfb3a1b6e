"""The review: out-of-fold judgement, cleanlab's flags, reasons as a type, dataset-relative quality, the CSV and
`pictaxon review` with and without a model. Photos every install has (scikit-image samples); the checks on the
shared bears and houseplants skip with one line when ../shared is absent."""
import csv, shutil
from pathlib import Path
import numpy as np
import pytest
from PIL import Image, ImageFilter
from pictaxon.cli import main
from pictaxon.core import PictaxonError
from pictaxon.images import jpeg_bytes, open_image
from pictaxon.moves import read_decisions
from pictaxon.review import (Reason, Review, judge_labels, out_of_fold_probabilities, quality_flags, review)
from pictaxon.train import sample_dataset


def other_photo(name: str, side: int = 160) -> Image.Image:
    from skimage import data
    return Image.fromarray(getattr(data, name)()).convert('RGB').resize((side, side))


@pytest.fixture
def planted(tmp_path) -> Path:
    """cat/coffee crops (12 each) with a moved cat, an exact and a near copy, a web page, a thumbnail, a dark and a
    blurred photo."""
    ds = sample_dataset(tmp_path / 'photos', per_class=12, side=160)
    shutil.copy(ds / 'cat' / '003.jpg', ds / 'cat' / 'copy.jpg')
    (ds / 'cat' / 'smaller.jpg').write_bytes(jpeg_bytes(open_image(ds / 'cat' / '003.jpg').resize((120, 120)), quality=70))
    (ds / 'cat' / '010.jpg').rename(ds / 'coffee' / 'cat-010.jpg')
    (ds / 'coffee' / 'page.jpg').write_bytes(b'<html><body>Access denied</body></html>')
    (ds / 'coffee' / 'thumb.jpg').write_bytes(jpeg_bytes(other_photo('astronaut').resize((40, 40))))
    (ds / 'coffee' / 'dark.jpg').write_bytes(jpeg_bytes(other_photo('rocket').point(lambda v: v // 16)))
    (ds / 'cat' / 'blurred.jpg').write_bytes(jpeg_bytes(other_photo('camera').filter(ImageFilter.GaussianBlur(8))))
    return ds


def test_a_reason_is_a_small_type_not_a_string_to_parse():
    reason = Reason('near_duplicate', 'looks the same as cat/1.jpg (hash distance 2)', {'of': 'cat/1.jpg', 'distance': 2})
    assert reason.group == 'duplicate' and reason.evidence['distance'] == 2
    assert reason.text == 'near duplicate: looks the same as cat/1.jpg (hash distance 2)'
    with pytest.raises(PictaxonError, match='Unknown reason kind'): Reason('suspicious', 'no such kind')


def test_quality_is_judged_against_this_dataset_so_product_shots_on_white_are_not_flagged():
    shots = [{'path': f'shop/{i}.jpg', 'width': 500, 'height': 500, 'sharpness': 30 + i, 'brightness': 226 + i % 9,
              'contrast': 28 + i % 5} for i in range(60)]
    assert quality_flags(shots) == {}                          # fixed limits would call all 60 blurry and too bright
    shots.append({'path': 'shop/night.jpg', 'width': 500, 'height': 500, 'sharpness': 40, 'brightness': 12, 'contrast': 20})
    shots.append({'path': 'shop/icon.jpg', 'width': 32, 'height': 32, 'sharpness': 40, 'brightness': 230, 'contrast': 30})
    flags = quality_flags(shots)
    assert sorted(flags) == ['shop/icon.jpg', 'shop/night.jpg']
    assert [r.kind for r in flags['shop/night.jpg']] == ['dark']
    assert 'tiny' in [r.kind for r in flags['shop/icon.jpg']]
    # Too few photos to know what is normal: only the absolute size limit applies.
    assert list(quality_flags(shots[-3:])) == ['shop/icon.jpg']


def test_out_of_fold_probabilities_never_come_from_a_head_that_saw_the_photo():
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(3), 30)
    points = rng.normal(size=(90, 8)) + 5 * np.eye(3, 8)[truth]
    given = truth.copy()
    given[[3, 40, 77]] = [1, 2, 0]
    # Each flipped photo has an exact copy with the same wrong label: in the same fold (groups), the copy cannot vouch.
    points = np.vstack([points, points[[3, 40, 77]]])
    given, truth = np.concatenate([given, [1, 2, 0]]), np.concatenate([truth, truth[[3, 40, 77]]])
    groups = np.concatenate([np.arange(90), [3, 40, 77]])
    oof = out_of_fold_probabilities(points, given, n_classes=3, groups=groups)
    assert (oof[[3, 40, 77, 90, 91, 92]].argmax(1) == truth[[3, 40, 77, 90, 91, 92]]).all()
    judged = judge_labels(given, oof)
    assert set(np.argsort(judged.quality)[:12]) >= {3, 40, 77, 90, 91, 92}
    assert (judged.predicted[judged.relabel] == truth[judged.relabel]).all()
    with pytest.raises(PictaxonError, match='at least 2 photos'): out_of_fold_probabilities(points[:3], [0, 1, 2], n_classes=3)


def test_relabel_needs_a_flag_and_a_sure_model():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0])
    probs = np.array([[.95, .05]] * 4 + [[.05, .95]] * 4 + [[.03, .97], [.3, .7]])
    judged = judge_labels(labels, probs, relabel_at=0.9)
    assert judged.issue[8] and judged.relabel[8]                 # flagged, 97% sure: relabel
    assert not judged.relabel[9]                                  # 70% sure: check at most
    assert not judged.relabel[:8].any()


def test_review_out_of_fold_finds_the_moved_photo_copies_and_junk(planted):
    result = review(planted)
    assert 'out-of-fold' in result.source and result.accuracy > 0.8
    rows = {r['path']: r for r in result.rows}
    assert result.label_ranking()[0]['path'] == 'coffee/cat-010.jpg'
    moved = rows['coffee/cat-010.jpg']
    assert moved['predicted'] == 'cat' and moved['split'] == 'out-of-fold'
    label = [r for r in moved['reasons'] if r.kind == 'label'][0]
    assert label.evidence['predicted'] == 'cat' and label.evidence['given'] == 'coffee' and label.evidence['p_predicted'] > 0.5
    assert moved['suggestion'] in ('relabel', 'check') and moved['suggested_label'] in ('cat', '')
    assert {p for p, r in rows.items() if r['suggestion'] == 'delete'} == \
        {'coffee/page.jpg', 'cat/copy.jpg', 'cat/smaller.jpg', 'coffee/thumb.jpg'}
    assert [r.kind for r in rows['coffee/page.jpg']['reasons']] == ['unreadable']
    assert rows['cat/copy.jpg']['duplicate_of'] == 'cat/003.jpg'
    assert {p for p, r in rows.items() if any(x.group == 'quality' for x in r['reasons'])} == \
        {'coffee/thumb.jpg', 'coffee/dark.jpg', 'cat/blurred.jpg'}
    # Never a relabel for a photo that is odd for the dataset, and every relabel is the truth here.
    assert all(r['suggested_label'] == 'cat' and r['path'] == 'coffee/cat-010.jpg' for r in result.rows if r['suggestion'] == 'relabel')
    assert result.rows[0]['suggestion'] == 'delete' and [r['rank'] for r in result.rows] == list(range(1, len(result.rows) + 1))


def test_review_csv_renders_reasons_and_keeps_formula_names_as_text(planted, tmp_path):
    (planted / 'coffee').rename(planted / '=coffee')          # a class folder a spreadsheet would run as a formula
    result = review(planted)
    out = result.to_csv(tmp_path / 'review.csv')
    with open(out, newline='', encoding='utf-8') as f: rows = list(csv.DictReader(f))
    page = next(r for r in rows if r['path'] == "'=coffee/page.jpg")
    assert page['given'] == "'=coffee" and page['reasons'].startswith('unreadable: ') and page['suggestion'] == 'delete'
    assert not any(v.startswith(('=', '+', '-', '@')) for r in rows for v in r.values())
    assert read_decisions(out) == []
    decisions = {d.path: d for d in read_decisions(out, accept_suggestions=True)}
    assert '=coffee/page.jpg' in decisions and all((planted / p).exists() for p in decisions)


def test_pictaxon_review_works_without_a_model_and_with_one(planted, tmp_path, capsys):
    out = tmp_path / 'review.csv'
    assert main(['review', str(planted), '--out', str(out), '--top', '5']) == 0
    printed = capsys.readouterr().out
    assert 'out-of-fold' in printed and out.exists()
    # A quick model trained on the folder (its card names its validation photos); --model judges with it.
    from pictaxon.features import train_quick
    (planted / 'coffee' / 'page.jpg').unlink()
    model = train_quick(planted, tmp_path / 'quick', report=False, progress=False)
    card = model.card if isinstance(getattr(model, 'card', None), dict) else None
    assert main(['review', str(planted), '--model', str(tmp_path / 'quick.json'), '--out', str(out)]) == 0
    assert 'model quick' in capsys.readouterr().out
    result = review(planted, tmp_path / 'quick.json')
    splits = {r['path']: r['split'] for r in result.rows}
    import json
    valid = set(json.loads((tmp_path / 'quick.json').read_text())['valid_files'])
    assert valid and all(splits[p] == 'valid' for p in valid)
    assert {splits[p] for p in splits if p not in valid} == {'train'}
    assert card is None or card.get('valid_files')


def test_unmodified_bears_get_at_most_two_relabels(bears_dir):
    result = review(bears_dir)
    relabels = [(r['path'], r['given'], r['suggested_label'], r['confidence']) for r in result.rows if r['suggestion'] == 'relabel']
    assert len(relabels) <= 2, relabels
    assert result.accuracy > 0.95
