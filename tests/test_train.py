"""Training: the dataset folder becomes a fastai Learner; real weights on real bears; the CLI writes model, card and report."""
import csv, json, os, random, shutil, subprocess, sys
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


def test_a_broken_photo_in_the_dataset_is_named(tmp_path):
    make_photos(tmp_path, per_class=4)
    (tmp_path / 'cat' / 'zz_page.jpg').write_text('<html><body>404</body></html>')
    with pytest.raises(PictaxonError, match=r'zz_page\.jpg.*web page'):
        train(tmp_path, epochs=1, size=32, batch_size=2, valid_pct=0.5, pretrained=False, progress=False)


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


def test_resnet_weights_found_in_the_cache_are_used(tmp_path, monkeypatch):
    import torch, torchvision
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    url = torchvision.models.get_model_weights('resnet18').DEFAULT.url
    cached = Path(torch.hub.get_dir()) / 'checkpoints' / url.rsplit('/', 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    ensure_weights('resnet18')                        # no download attempted, no error


def test_cli_train_writes_model_card_and_report(photos, tmp_path):
    out = tmp_path / 'models' / 'photos.pkl'
    result = subprocess.run([PICTAXON, 'train', str(photos), '--out', str(out), '--no-pretrained', '--epochs', '2',
                             '--size', '48', '--batch-size', '4', '--lr', '0.01'],
                            capture_output=True, text=True, timeout=300, env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stderr
    assert 'valid accuracy' in result.stdout
    card = json.loads(out.with_suffix('.json').read_text())
    assert card['classes'] == ['cat', 'coffee'] and card['epochs'] == 2 and card['input_size'] == 48
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
