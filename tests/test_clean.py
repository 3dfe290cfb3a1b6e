"""Cleaning loses nothing: safe apply, undo, crash recovery, the reviewer, and `pictaxon review`/`clean`."""
import csv, os, shutil, signal, subprocess, sys, textwrap, time
from collections import Counter
from pathlib import Path
import pytest
from PIL import Image, ImageFilter

from pictaxon.cli import main
from pictaxon.clean import (Decision, CleaningError, Reviewer, apply_cleaner, apply_decisions, read_decisions,
                            read_log, review, undo, LOG_NAME)
from pictaxon.core import read_manifest, sha256_file, write_manifest, QUARANTINE_DIR
from pictaxon.images import jpeg_bytes, open_image

ROOT = Path(__file__).resolve().parents[1]


def small_dataset(bears_dir, dest, per_class=6, manifest=True):
    "A copy of `per_class` bear photos a class, with a manifest like gather writes."
    rows = []
    for folder in ('black', 'grizzly', 'teddy'):
        (dest/folder).mkdir(parents=True)
        for path in sorted((bears_dir/folder).glob('*.jpg'))[:per_class]:
            shutil.copy2(path, dest/folder/path.name)
            rows.append({'class': folder, 'query': folder, 'source': f'http://example.test/{folder}/{path.name}',
                         'status': 'kept', 'file': f'{folder}/{path.name}', 'sha256': sha256_file(path),
                         'phash': '', 'width': '', 'height': ''})
    if manifest: write_manifest(dest, rows)
    return dest


def files(dataset):
    "The multiset of (path, sha256) of every photo in `dataset`, quarantine included."
    return Counter((p.relative_to(dataset).as_posix(), sha256_file(p)) for p in Path(dataset).rglob('*.jpg'))


def contents(dataset):
    "The multiset of sha256 of every photo in `dataset`, quarantine included: what must never shrink."
    return Counter(h for _, h in files(dataset))


def names(dataset, folder):
    return sorted(p.name for p in (Path(dataset)/folder).glob('*.jpg'))


@pytest.fixture
def dataset(bears_dir, tmp_path):
    return small_dataset(bears_dir, tmp_path/'bears')


DECISIONS = [('black/00000000.jpg', 'delete'), ('black/00000001.jpg', 'relabel', 'grizzly'),
             ('grizzly/00000003.jpg', 'relabel', 'teddy'), ('teddy/00000002.jpg', 'delete'),
             ('teddy/00000003.jpg', 'relabel', 'black')]


def test_apply_moves_logs_updates_manifest_and_undo_restores_every_byte(dataset):
    before, manifest_before = files(dataset), read_manifest(dataset)
    report = apply_decisions(dataset, DECISIONS)
    assert report.moved == 5
    assert contents(dataset) == Counter(h for _, h in before)
    assert 'black/00000000.jpg' not in {p for p, _ in files(dataset)}
    assert (dataset/QUARANTINE_DIR/'black'/'00000000.jpg').is_file()
    # grizzly/00000001.jpg already exists: the relabelled black photo gets a free name, nothing is overwritten
    assert 'grizzly/00000001-2.jpg' in {p for p, _ in files(dataset)}
    assert sha256_file(dataset/'grizzly'/'00000001.jpg') == dict(before.keys())['grizzly/00000001.jpg']
    moves = [r for r in read_log(dataset) if r['event'] == 'move']
    assert [(m['action'], m['source']) for m in moves] == [(d[1], d[0]) for d in DECISIONS]
    assert all(m['sha256'] == dict(before.keys())[m['source']] and m['time'] for m in moves)
    rows = {r['source'].split('/', 3)[-1]: r for r in read_manifest(dataset)}
    assert rows['black/00000000.jpg']['status'] == 'quarantined:cleaning'
    assert rows['black/00000000.jpg']['file'] == '.quarantine/black/00000000.jpg'
    assert (rows['teddy/00000003.jpg']['class'], rows['teddy/00000003.jpg']['file']) == ('black', 'black/00000003.jpg')

    undo(dataset)
    assert files(dataset) == before
    assert read_manifest(dataset) == manifest_before


def test_apply_is_idempotent_and_undo_steps_and_all(dataset):
    before = files(dataset)
    apply_decisions(dataset, DECISIONS[:2])
    after_first = files(dataset)
    assert apply_decisions(dataset, DECISIONS[:2]).moved == 0          # the same decisions again: nothing
    assert files(dataset) == after_first
    apply_decisions(dataset, DECISIONS[2:4])
    apply_decisions(dataset, DECISIONS[4:])
    undo(dataset, steps=2)
    assert files(dataset) == after_first
    apply_decisions(dataset, DECISIONS[4:])
    undo(dataset, all=True)
    assert files(dataset) == before
    assert undo(dataset).moved == 0


def test_bad_decisions_are_refused_before_anything_moves(dataset):
    before = files(dataset)
    for decisions, message in [([('black/missing.jpg', 'delete')], 'no photo at'),
                               ([('black/00000000.jpg', 'delete'), ('black/00000000.jpg', 'relabel', 'teddy')],
                                'two different decisions'),
                               ([('black/00000000.jpg', 'relabel', '../elsewhere')], 'cannot be a class'),
                               ([('../outside.jpg', 'delete')], 'not a photo in a class folder'),
                               ([('black/00000000.jpg', 'burn')], "Unknown action 'burn'")]:
        with pytest.raises(CleaningError, match=message):
            apply_decisions(dataset, [d[0] if isinstance(d, Decision) else d for d in decisions])
    assert files(dataset) == before


CRASHING_APPLY = textwrap.dedent('''
    import os, signal, sys
    from pictaxon.clean import apply_decisions, undo
    dataset, k, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    real_rename, moves = os.rename, []
    def rename(src, dst):
        if len(moves) == k: os.kill(os.getpid(), signal.SIGKILL)   # the process dies here, no cleanup at all
        moves.append(src); real_rename(src, dst)
    os.rename = rename
    decisions = [('black/00000000.jpg', 'delete'), ('black/00000001.jpg', 'relabel', 'grizzly'),
                 ('grizzly/00000003.jpg', 'relabel', 'teddy'), ('teddy/00000002.jpg', 'delete'),
                 ('teddy/00000003.jpg', 'relabel', 'black')]
    if what == 'apply': apply_decisions(dataset, decisions)
    else: undo(dataset)
''')


@pytest.mark.parametrize('k', [0, 2, 4])
def test_killed_apply_loses_nothing_and_can_be_completed_and_undone(dataset, tmp_path, k):
    before, manifest_before = files(dataset), read_manifest(dataset)
    script = tmp_path/'crash.py'
    script.write_text(CRASHING_APPLY)
    done = subprocess.run([sys.executable, str(script), str(dataset), str(k), 'apply'], capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert contents(dataset) == Counter(h for _, h in before)           # killed mid-way: every photo still there
    assert len([p for p, _ in files(dataset) if p.startswith(QUARANTINE_DIR)]) <= 2
    # Re-running the same apply (here through the CLI) finishes the interrupted batch and adds nothing.
    decisions = tmp_path/'decisions.csv'
    decisions.write_text('path,action,new_label\n' + ''.join(','.join(d) + (',\n' if len(d) == 2 else '\n') for d in DECISIONS))
    assert main(['clean', str(dataset), '--apply', str(decisions)]) == 0
    completed = files(dataset)
    assert contents(dataset) == Counter(h for _, h in before)
    assert {'.quarantine/black/00000000.jpg', 'grizzly/00000001-2.jpg', 'teddy/00000003-2.jpg',
            '.quarantine/teddy/00000002.jpg', 'black/00000003.jpg'} <= {p for p, _ in completed}
    # A killed undo is finished the same way, and the dataset is back to the state before the apply.
    done = subprocess.run([sys.executable, str(script), str(dataset), '1', 'undo'], capture_output=True)
    assert done.returncode == -signal.SIGKILL
    assert contents(dataset) == Counter(h for _, h in before)
    assert main(['clean', str(dataset), '--undo']) == 0
    assert files(dataset) == before and read_manifest(dataset) == manifest_before


def test_two_cleans_at_once_are_refused(dataset):
    import fcntl
    from pictaxon.core import DatasetBusy
    held = os.open(dataset, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)             # as another process in the middle of an apply would
        with pytest.raises(DatasetBusy, match='Another pictaxon process .* is changing'):
            apply_decisions(dataset, DECISIONS, lock_wait=0.2)
        assert apply_decisions(dataset, DECISIONS, dry_run=True).moved == 5    # looking is always allowed
    finally: os.close(held)
    assert apply_decisions(dataset, DECISIONS).moved == 5
    assert not (dataset/'.cleaning.lock').exists()   # the lock leaves no file in the dataset


def test_torn_log_line_from_a_killed_process_is_ignored(dataset):
    apply_decisions(dataset, DECISIONS[:1])
    with open(dataset/LOG_NAME, 'a') as f: f.write('{"event": "mo')
    apply_decisions(dataset, DECISIONS[1:2])
    assert [r['event'] for r in read_log(dataset)] == ['begin', 'move', 'commit'] * 2
    undo(dataset, all=True)
    assert (dataset/'black'/'00000000.jpg').is_file() and (dataset/'black'/'00000001.jpg').is_file()


def add_planted_copies(dataset, bears_dir):
    "An exact copy, a smaller re-compressed copy, and a tiny, a dark and a blurred photo (from unused bears)."
    shutil.copy(dataset/'grizzly'/'00000002.jpg', dataset/'grizzly'/'copy.jpg')
    photo = open_image(dataset/'teddy'/'00000001.jpg')
    (dataset/'teddy'/'smaller.jpg').write_bytes(jpeg_bytes(photo.resize((photo.width * 3 // 4, photo.height * 3 // 4)), 70))
    unused = sorted((bears_dir/'black').glob('*.jpg'))[30:33]
    (dataset/'black'/'tiny.jpg').write_bytes(jpeg_bytes(open_image(unused[0]).resize((40, 28))))
    (dataset/'black'/'dark.jpg').write_bytes(jpeg_bytes(open_image(unused[1]).point(lambda v: v // 10)))
    (dataset/'black'/'blurred.jpg').write_bytes(jpeg_bytes(open_image(unused[2]).filter(ImageFilter.GaussianBlur(6))))


# The review itself (out-of-fold judgement, reasons, quality, `pictaxon review`) is tested in tests/test_review.py
# and the reviewer in tests/test_reviewer.py.


def test_cli_errors_are_one_clear_line(dataset, tmp_path, capsys):
    assert main(['clean', str(dataset), '--apply', str(tmp_path/'nope.csv')]) == 1
    assert 'No decisions file at' in capsys.readouterr().err
    (tmp_path/'d.csv').write_text('black/00000000.jpg,relabel\n')
    assert main(['clean', str(dataset), '--apply', str(tmp_path/'d.csv')]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'line 1: The relabel of black/00000000.jpg names no new label' in err
    assert main(['review', str(tmp_path/'none')]) == 1
    assert 'No dataset folder at' in capsys.readouterr().err


def test_reviewer_keeps_marks_across_switches_and_applies_with_preview(dataset, bears_dir):
    add_planted_copies(dataset, bears_dir)
    reviewer = Reviewer(review(dataset), per_page=2)
    assert len(reviewer.rows()) == 5 and reviewer.pages == 3
    first = reviewer.grid.children[0].children[2]
    first.value = 'delete'                                   # as a click in the dropdown would
    reviewer.next.click()
    second = reviewer.grid.children[0].children[2]
    relabel = [v for _, v in second.options if v not in ('keep', 'delete')][0]
    second.value = relabel
    reviewer.category.value = 'teddy'
    reviewer.view.value = 'all'
    reviewer.show(3)
    assert reviewer.page == 3 and [r["path"] for r in reviewer.shown] == ["teddy/smaller.jpg"]   # 7 teddy photos, 2 a page
    reviewer.split.value = '(all)'
    reviewer.category.value = '(all)'
    reviewer.view.value = 'suspects'
    assert reviewer.page == 0 and reviewer.grid.children[0].children[2].value == 'delete'
    reviewer.next.click()
    assert reviewer.grid.children[0].children[2].value == relabel
    assert reviewer.value == sorted([Decision(first.path, 'delete'), Decision(second.path, 'relabel', relabel)],
                                    key=lambda d: d.path)
    # Bulk marks act on the page only, and can be cleared.
    reviewer.delete_page.click()
    assert len(reviewer.value) == 3
    reviewer.clear_page.click()
    assert len(reviewer.value) == 1
    reviewer.next.click(); reviewer.next.click()   # clamped to the last page
    assert reviewer.page == 2
    reviewer.previous.click()
    reviewer.grid.children[0].children[2].value = relabel
    # Apply shows what will happen first, changes nothing until confirmed; undo restores.
    before = files(dataset)
    reviewer.apply_button.click()
    assert 'Will apply: 1 delete, 1 relabel' in reviewer.preview.value and files(dataset) == before
    reviewer.cancel.click()
    assert reviewer.preview.value == '' and len(reviewer.value) == 2
    reviewer.apply_button.click()
    reviewer.confirm.click()
    assert reviewer.value == [] and not (dataset/first.path).exists()
    assert (dataset/QUARANTINE_DIR/first.path).is_file()
    assert all(r['path'] != first.path for r in reviewer.review.rows)
    reviewer.undo_button.click()
    assert files(dataset) == before and 'Undid: 2 restore' in reviewer.status.value


def test_fastai_cleaner_marks_are_applied_safely(dataset, monkeypatch):
    """fastai's own ImageClassifierCleaner on a real (untrained) learner: its marks go through the safe path."""
    import builtins
    from IPython.display import display
    monkeypatch.setattr(builtins, 'display', display, raising=False)   # fastai's thumbnails assume an IPython shell
    from fastai.vision.widgets import ImageClassifierCleaner
    from pictaxon.train import create_learner, make_dataloaders
    learn = create_learner(make_dataloaders(dataset, size=64, batch_size=8, valid_pct=0.5), pretrained=False)
    cleaner = ImageClassifierCleaner(learn)
    cleaner.dd_cats.value, cleaner.dd_ds.value = 'black', 'Train'
    dropdowns = [box.children[1] for box in cleaner.iw.widget.children]
    dropdowns[0].value, dropdowns[1].value = '<Delete>', 'teddy'
    deleted, relabelled = Path(cleaner.fns[0]), Path(cleaner.fns[1])
    before = files(dataset)
    report = apply_cleaner(cleaner, dataset)
    assert [s['action'] for s in report.steps] == ['delete', 'relabel']
    assert (dataset/QUARANTINE_DIR/'black'/deleted.name).is_file() and not deleted.exists()
    assert list((dataset/'teddy').glob(relabelled.stem + '*.jpg')) and not relabelled.exists()
    undo(dataset)
    assert files(dataset) == before


def test_no_code_path_unlinks_a_photo(dataset, bears_dir, tmp_path, monkeypatch):
    """The whole flow runs with every way of deleting a file made to fail."""
    add_planted_copies(dataset, bears_dir)
    before = files(dataset)
    deletions = []
    def refuse(*args, **kwargs):
        deletions.append(args)
        raise AssertionError(f'something tried to delete {args}')
    monkeypatch.setattr(os, 'unlink', refuse)
    monkeypatch.setattr(os, 'remove', refuse)
    monkeypatch.setattr(Path, 'unlink', refuse)
    monkeypatch.setattr(shutil, 'rmtree', refuse)
    out = tmp_path/'review.csv'
    assert main(['review', str(dataset), '--out', str(out)]) == 0
    assert main(['clean', str(dataset), '--apply', str(out), '--accept-suggestions']) == 0
    apply_decisions(dataset, DECISIONS)
    real_rename, moves = os.rename, []
    def crash(src, dst):
        if len(moves) == 1: raise KeyboardInterrupt
        moves.append(src); real_rename(src, dst)
    monkeypatch.setattr(os, 'rename', crash)
    with pytest.raises(KeyboardInterrupt): undo(dataset)
    monkeypatch.setattr(os, 'rename', real_rename)
    reviewer = Reviewer(review(dataset))
    reviewer.grid.children[0].children[2].value = 'delete'
    reviewer.apply()
    reviewer.undo()
    assert main(['clean', str(dataset), '--undo', '--all']) == 0
    assert deletions == [] and files(dataset) == before
