"""Training: the dataset folder becomes a fastai Learner; real weights on real bears; the CLI writes model, card and report."""
import csv, json, os, random, re, shutil, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pictaxon.core import PictaxonError
from pictaxon.train import (train, make_dataloaders, create_learner, write_report, ensure_weights,
                            WeightsUnavailable, dataset_items, sample_dataset)

PICTAXON = str(Path(sys.executable).with_name('pictaxon'))


def make_photos(root, per_class=10):
    """pictaxon's tiny sample dataset (real photos: cat, coffee), plus a .quarantine folder that is no class."""
    root = sample_dataset(root, per_class=per_class)
    (root / '.quarantine').mkdir(exist_ok=True)
    Image.new('RGB', (60, 60), (0, 255, 0)).save(root / '.quarantine' / 'moved.jpg')
    return root


pytestmark = pytest.mark.usefixtures('one_torch_thread')


ONE_THREAD_ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    return make_photos(tmp_path_factory.mktemp('photos'))


@pytest.fixture(scope='module')
def tiny_learner(photos):
    """ImageNet weights, one frozen and one unfrozen epoch at 64 px: a couple of seconds."""
    return train(photos, epochs=1, size=64, batch_size=4, progress=False)


def test_classes_come_from_visible_class_folders(photos):
    classes, items = dataset_items(photos)
    assert classes == ['cat', 'coffee']
    assert len(items) == 20 and not any('.quarantine' in str(p) for p in items)


def test_split_is_fixed_by_the_seed_and_valid_files_override_it(photos):
    first = make_dataloaders(photos, size=48, seed=1).valid_ds.items
    assert make_dataloaders(photos, size=48, seed=1).valid_ds.items == first
    assert make_dataloaders(photos, size=48, seed=2).valid_ds.items != first
    assert len(first) == 4
    chosen = [photos / 'cat' / '003.jpg', photos / 'coffee' / '007.jpg']
    dls = make_dataloaders(photos, size=48, valid_files=chosen)
    assert sorted(map(str, dls.valid_ds.items)) == sorted(map(str, chosen))
    assert len(dls.train_ds) == 18


def test_one_class_is_refused_with_a_reason(tmp_path):
    make_photos(tmp_path, per_class=3)
    shutil.rmtree(tmp_path / 'coffee')
    with pytest.raises(PictaxonError, match='at least two'):
        train(tmp_path, epochs=1, pretrained=False, progress=False)


def test_every_unusable_photo_is_named_at_once_and_left_out(tmp_path):
    """Two broken files: one warning naming both (not fastai's "Your generator is empty" at the first), training
    goes on without them, and the card lists them."""
    make_photos(tmp_path, per_class=4)
    (tmp_path / 'cat' / 'zz_page.jpg').write_text('<html><body>404</body></html>')
    (tmp_path / 'coffee' / 'cut.jpg').write_bytes((tmp_path / 'coffee' / '000.jpg').read_bytes()[:150])
    with pytest.warns(UserWarning, match=r'Left out 2 unusable.*cat/zz_page\.jpg: .*web page.*coffee/cut\.jpg'):
        learn = train(tmp_path, epochs=1, size=32, batch_size=2, valid_pct=0.5, pretrained=False, progress=False)
    info = learn.training_info
    assert [s['file'] for s in info['skipped_files']] == ['cat/zz_page.jpg', 'coffee/cut.jpg']
    assert info['n_train'] + info['n_valid'] == 8


def test_a_class_with_no_usable_photo_is_refused(tmp_path):
    make_photos(tmp_path, per_class=3)
    for photo in (tmp_path / 'coffee').iterdir(): photo.write_text('<html>gone</html>')
    with pytest.warns(UserWarning), pytest.raises(PictaxonError, match='fewer than two class folders'):
        train(tmp_path, epochs=1, size=32, pretrained=False, progress=False)


def test_valid_files_of_an_old_card_are_reused_and_a_relabelled_photo_found_by_its_bytes(tmp_path):
    make_photos(tmp_path, per_class=5)
    first = train(tmp_path, epochs=1, size=32, batch_size=2, pretrained=False, progress=False).training_info
    valid, shas = first['valid_files'], first['valid_sha256']
    assert len(valid) == 2 and first['kind'] == 'fine-tuned'
    moved = valid[0]
    other = 'coffee' if moved.startswith('cat') else 'cat'
    shutil.move(tmp_path / moved, tmp_path / other / 'relabelled.jpg')
    (tmp_path / valid[1]).unlink()
    with pytest.warns(UserWarning, match=f'1 of the 2 validation photos.*{valid[1]}'):
        again = train(tmp_path, epochs=1, size=32, batch_size=2, pretrained=False, progress=False,
                      valid_files=valid, valid_sha256=shas).training_info
    assert again['valid_files'] == [f'{other}/relabelled.jpg'] and again['valid_missing'] == [valid[1]]


def test_micro_batches_add_up_to_the_batch_size(photos):
    """Batches of 4 photos made of micro-batches of 2: half the optimiser steps of micro-batches alone."""
    from fastai.vision.all import Callback
    import pictaxon.train as pt
    steps = []
    class CountSteps(Callback):           # fastai calls after_step for a cancelled (accumulating) step too
        def after_step(self): steps.append(1)
        def after_cancel_step(self): steps.append(-1)
    original = pt.create_learner
    def counting(*args, **kwargs):
        learn = original(*args, **kwargs); learn.add_cb(CountSteps()); return learn
    pt.create_learner = counting
    try:
        info = train(photos, epochs=1, size=32, batch_size=4, micro_batch=2, pretrained=False, progress=False).training_info
        accumulated = sum(steps); steps.clear()
        train(photos, epochs=1, size=32, batch_size=2, micro_batch=2, pretrained=False, progress=False)
    finally: pt.create_learner = original
    assert info['micro_batch'] == 2 and info['batch_size'] == 4
    assert sum(steps) == 8 and accumulated == 4        # 16 training photos: 8 micro-batches, a step every 2


def test_tiny_dataset_is_learnt_with_imagenet_weights(tiny_learner):
    info = tiny_learner.training_info
    assert info['valid_accuracy'] == 1.0          # a cat and a coffee cup: ImageNet features separate them
    assert info['images_per_class'] == {'cat': 10, 'coffee': 10}
    assert info['n_train'] == 16 and info['n_valid'] == 4 and info['architecture'] == 'efficientnet_lite0'
    assert [e['epoch'] for e in tiny_learner.training_history.epochs] == [0, 1]   # frozen, then unfrozen


def test_tiny_dataset_trains_from_random_weights_in_seconds(photos):
    learn = train(photos, epochs=2, size=48, batch_size=4, pretrained=False, progress=False)
    info = learn.training_info
    assert info['pretrained'] is False and info['epochs'] == 2
    assert sum(m['support'] for m in info['valid_per_class'].values()) == info['n_valid'] == 4
    assert info['valid_accuracy'] == learn.evaluation.accuracy
    assert learn.model[0][0].weight.requires_grad     # nothing frozen without pretrained weights


def test_report_folder_holds_the_four_views(tiny_learner, tmp_path):
    folder = write_report(tiny_learner, tmp_path / 'report')
    assert sorted(p.name for p in folder.iterdir()) == ['confusion_matrix.png', 'per_class.csv',
                                                        'top_losses.png', 'training_curve.png']
    for png in folder.glob('*.png'):
        assert Image.open(png).size[0] > 200
    rows = list(csv.DictReader(open(folder / 'per_class.csv')))
    assert [r['class'] for r in rows] == ['cat', 'coffee', 'accuracy']
    assert float(rows[0]['f1']) == 1.0 and rows[0]['support'] == '2'


def test_pretrained_learner_starts_with_the_body_frozen(photos):
    learn = create_learner(make_dataloaders(photos, size=48), 'efficientnet_lite0', pretrained=True)
    body, head = learn.model[0], learn.model[1]
    assert not body[0].weight.requires_grad           # stem convolution
    assert body[1].weight.requires_grad               # batch norm trains, as fastai does
    assert all(p.requires_grad for p in head.parameters())
    assert len(learn.opt.param_groups) == 3           # discriminative learning rates
    learn.unfreeze()
    assert body[0].weight.requires_grad


def test_resnet_offline_and_not_cached_says_what_to_do(photos, tmp_path):
    """No weights under an empty TORCH_HOME and no internet: one line, pointing at both ways forward, quickly."""
    env = {**ONE_THREAD_ENV, 'TORCH_HOME': str(tmp_path / 'torch_home')}
    result = subprocess.run([PICTAXON, 'train', str(photos), '--out', str(tmp_path / 'm.pkl'), '--arch', 'resnet18'],
                            capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 1, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith('pictaxon train:') and 'resnet18' in message
    assert 'TORCH_HOME' in message and '--arch efficientnet_lite0' in message
    assert not (tmp_path / 'm.pkl').exists()


def test_resnet_weights_found_in_the_cache_are_used(tmp_path, monkeypatch, photos):
    """Weights in TORCH_HOME's cache: no download is attempted (any would fail loudly) and the network gets
    exactly the cached weights."""
    import torch, torchvision
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    url = torchvision.models.get_model_weights('resnet18').DEFAULT.url
    cached = Path(torch.hub.get_dir()) / 'checkpoints' / url.rsplit('/', 1)[-1]
    cached.parent.mkdir(parents=True)
    weights = torchvision.models.resnet18().state_dict()
    torch.save(weights, cached)
    def no_download(*args, **kwargs): raise AssertionError(f'a download was attempted: {args}')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_download)
    ensure_weights('resnet18')
    learn = create_learner(make_dataloaders(photos, size=32, batch_size=4), 'resnet18', pretrained=True)
    assert torch.equal(learn.model[0][0].weight, weights['conv1.weight'])    # the cached file, not fresh weights


def test_cli_train_writes_model_card_and_report(photos, tmp_path):
    out = tmp_path / 'models' / 'photos.pkl'
    result = subprocess.run([PICTAXON, 'train', str(photos), '--out', str(out), '--no-pretrained', '--epochs', '2',
                             '--size', '48', '--batch-size', '4', '--lr', '0.01'],
                            capture_output=True, text=True, timeout=300, env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stderr
    assert 'valid accuracy' in result.stdout
    card = json.loads(out.with_suffix('.json').read_text())
    assert card['classes'] == ['cat', 'coffee'] and card['epochs'] == 2 and card['input_size'] == 48
    assert card['kind'] == 'fine-tuned' and card['micro_batch'] == 4 and len(card['valid_files']) == card['n_valid'] == 4
    assert card['unknown']['dim'] > 0                 # "none of these", calibrated on the training photos
    assert sorted(p.name for p in (tmp_path / 'models' / 'photos_report').iterdir()) == [
        'confusion_matrix.png', 'per_class.csv', 'top_losses.png', 'training_curve.png']


@pytest.mark.slow
def test_real_weights_on_a_sample_of_bears_reach_90_percent(bears_dir, tmp_path):
    """EfficientNet-Lite0 with its ImageNet weights, one frozen and one unfrozen epoch on 40 photos per class."""
    rng = random.Random(0)
    for cls in ['black', 'grizzly', 'teddy']:
        (tmp_path / cls).mkdir()
        for f in rng.sample(sorted((bears_dir / cls).glob('*.jpg')), 40):
            (tmp_path / cls / f.name).symlink_to(f)
    learn = train(tmp_path, epochs=1, size=192, progress=False)
    assert learn.training_info['n_valid'] == 24
    assert learn.training_info['valid_accuracy'] >= 0.90, learn.evaluation.table()


@pytest.mark.slow
def test_default_recipe_fits_in_binder_memory(bears_dir, tmp_path):
    """The default `pictaxon train` (micro-batches of 8) inside binder-box: 2 GB and one CPU, no OOM kill.
    40 bears per class and one unfrozen epoch: the peak is set by the micro-batch, not by the number of photos."""
    box = bears_dir.parents[1] / 'tools' / 'binder-box'
    if not box.exists() or os.geteuid() != 0: pytest.skip('not run: binder-box needs root and ../shared/tools')
    rng = random.Random(0)
    for cls in ['black', 'grizzly', 'teddy']:
        (tmp_path / 'data' / cls).mkdir(parents=True)
        for f in rng.sample(sorted((bears_dir / cls).glob('*.jpg')), 40):
            (tmp_path / 'data' / cls / f.name).symlink_to(f)
    result = subprocess.run([sys.executable, str(box), '--', PICTAXON, 'train', str(tmp_path / 'data'), '--out',
                             str(tmp_path / 'm'), '--epochs', '1'], capture_output=True, text=True, env=ONE_THREAD_ENV,
                            timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:]
    peak = int(re.search(r'peak resident (\d+) MB', result.stdout + result.stderr).group(1))
    assert 'OOM kills 0' in result.stdout + result.stderr and peak < 1800, peak
