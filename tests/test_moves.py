"""The safe moves (issue 9): nothing a clean does can wedge a dataset, and bad decision files get one clear
message. Photos every install has (scikit-image samples), gathered through the real `gather --from-folder`."""
import os
from collections import Counter
from pathlib import Path
import pytest

from pictaxon.cli import main
from pictaxon.core import read_manifest, sha256_file
from pictaxon.gather import gather
from pictaxon.moves import CleaningError, Decision, apply_decisions, read_decisions, read_log, undo
from webserver import sample_photos


@pytest.fixture(scope='module')
def samples():
    return sample_photos(4)


@pytest.fixture
def dataset(tmp_path, samples):
    mine = tmp_path / 'mine'
    for name, data in samples.items():
        (mine / name.split('-')[0]).mkdir(parents=True, exist_ok=True)
        (mine / name.split('-')[0] / name).write_bytes(data)
    dest = tmp_path / 'photos'
    gather(dest, from_folder=mine, progress=False)
    return dest


def files(dataset):
    return {p.relative_to(dataset).as_posix(): sha256_file(p) for p in Path(dataset).rglob('*.jpg')}


def photo(dataset, folder, i=0):
    return f'{folder}/{sorted(p.name for p in (dataset / folder).glob("*.jpg"))[i]}'


def test_a_relabel_onto_a_file_name_is_refused_and_never_wedges(dataset):
    """Item 3: a relabel to manifest.csv (any case) or the log's name is refused before anything moves; an OSError
    in the middle of a batch is rolled back; the next apply and undo work."""
    before, manifest = files(dataset), (dataset / 'manifest.csv').read_bytes()
    for label in ('manifest.csv', 'MANIFEST.csv', 'cleaning_log.jsonl', 'x' * 300):
        with pytest.raises(CleaningError, match='cannot be a class folder name'):
            apply_decisions(dataset, [(photo(dataset, 'cat'), 'delete'), (photo(dataset, 'cat', 1), 'relabel', label)])
    (dataset / 'notes.txt').write_text('mine')
    with pytest.raises(CleaningError, match='the file notes.txt is in its place'):
        apply_decisions(dataset, [(photo(dataset, 'cat'), 'relabel', 'NOTES.TXT')])
    assert files(dataset) == before and (dataset / 'manifest.csv').read_bytes() == manifest
    # An error no plan can see (here: the disk fills up at the second move) rolls the batch back at once.
    real, calls = os.rename, []
    def full_disk(src, dst):
        calls.append(src)
        if len(calls) == 2: raise OSError(28, 'No space left on device')
        real(src, dst)
    decisions = [(photo(dataset, 'cat'), 'delete'), (photo(dataset, 'coffee'), 'relabel', 'rocket')]
    os.rename = full_disk
    try:
        with pytest.raises(CleaningError, match='No space left on device.*rolled back'):
            apply_decisions(dataset, decisions)
    finally: os.rename = real
    assert files(dataset) == before and (dataset / 'manifest.csv').read_bytes() == manifest
    assert read_log(dataset)[-1]['event'] == 'abort'
    assert apply_decisions(dataset, decisions).moved == 2 and undo(dataset).moved == 2
    assert files(dataset) == before and (dataset / 'manifest.csv').read_bytes() == manifest


def test_a_batch_that_cannot_be_finished_is_rolled_back_by_the_next_command(dataset):
    """Item 3: an interrupted batch whose next move became impossible does not block every later command."""
    import json, time
    before = files(dataset)
    a, b = photo(dataset, 'cat'), photo(dataset, 'coffee')
    os.rename(dataset / a, dataset / 'rocket' / Path(a).name)              # the first move was done...
    steps = [{'action': 'relabel', 'source': a, 'destination': f'rocket/{Path(a).name}', 'sha256': before[a], 'row': None, 'new_row': None},
             {'action': 'relabel', 'source': b, 'destination': 'manifest.csv/x.jpg', 'sha256': before[b], 'row': None, 'new_row': None}]
    with open(dataset / 'cleaning_log.jsonl', 'a') as log:                   # ...then the process died (an old version's plan)
        log.write(json.dumps({'event': 'begin', 'batch': 'b1', 'kind': 'apply', 'steps': steps, 'time': time.ctime()}) + '\n')
    report = apply_decisions(dataset, [(photo(dataset, 'astronaut'), 'delete')])
    assert 'could not be finished' in report.summary() and report.moved == 1
    assert undo(dataset).moved == 1 and files(dataset) == before


def test_the_same_decision_twice_is_one_move_and_undo_works(dataset, tmp_path):
    """Item 4: a duplicated row in a decisions CSV applies once; undo restores every byte."""
    before, manifest = files(dataset), (dataset / 'manifest.csv').read_bytes()
    decisions = tmp_path / 'd.csv'
    row = f'{photo(dataset, "cat")},delete\n'
    decisions.write_text('path,action,new_label\n' + row + row + f'{photo(dataset, "coffee")},relabel,cat\n' * 2)
    assert main(['clean', str(dataset), '--apply', str(decisions)]) == 0
    assert len([r for r in read_log(dataset) if r['event'] == 'move']) == 2
    assert main(['clean', str(dataset), '--undo']) == 0
    assert files(dataset) == before and (dataset / 'manifest.csv').read_bytes() == manifest


@pytest.mark.parametrize('content, message', [
    ('path,action,new_label\ncat/x.jpg,relabel,café\n'.encode('cp1252'), 'is not UTF-8 text'),
    (None, 'over 100 characters'),
    ('class,url\ncat,http://example.com/cat.jpg\n'.encode(), 'a list of photos to gather'),
])
def test_decision_files_that_cannot_be_used_get_one_clear_line(dataset, tmp_path, capsys, content, message):
    """Item 12: not UTF-8, a 300-character label, a class,url list given to clean: one line, exit 1, nothing moved."""
    if content is None: content = f'path,action,new_label\n{photo(dataset, "cat")},relabel,{"x" * 300}\n'.encode()
    before = files(dataset)
    decisions = tmp_path / 'd.csv'
    decisions.write_bytes(content)
    assert main(['clean', str(dataset), '--apply', str(decisions)]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and 'Traceback' not in err
    assert files(dataset) == before


@pytest.mark.parametrize('encode', [
    lambda text: b'\xef\xbb\xbf' + text.encode(),                                   # Excel "CSV UTF-8": a BOM
    lambda text: text.replace(',', ';').replace('\n', '\r\n').encode(),              # European Excel: semicolons
    lambda text: b'\xef\xbb\xbf' + text.replace(',', ';').encode(),                  # both
])
def test_spreadsheet_saved_decisions_mean_what_they_say(dataset, tmp_path, encode):
    """Item 12: a BOM header and a semicolon-separated file are read as the decisions they hold (not "nothing")."""
    decisions = tmp_path / 'd.csv'
    cat = photo(dataset, 'cat')
    decisions.write_bytes(encode(f'path,action,new_label\n{cat},relabel,coffee\n'))
    assert read_decisions(decisions) == [Decision(cat, 'relabel', 'coffee')]
    assert main(['clean', str(dataset), '--apply', str(decisions)]) == 0
    assert not (dataset / cat).exists()


def test_no_lock_file_is_left_in_the_dataset(dataset, tmp_path):
    """Item 16: apply and undo lock the dataset folder itself; nothing is left behind (and gather leaves nothing)."""
    apply_decisions(dataset, [(photo(dataset, 'cat'), 'delete')])
    undo(dataset)
    hidden = {p.name for p in dataset.iterdir() if p.name.startswith('.')}
    assert hidden <= {'.quarantine'} and not list(dataset.rglob('*.lock'))


def test_a_decision_made_on_an_older_view_follows_its_photo(dataset):
    """A decision names a photo where someone saw it; if a clean moved it since, it applies where it is now."""
    before = files(dataset)
    cat = photo(dataset, 'cat')
    [step] = apply_decisions(dataset, [(cat, 'relabel', 'rocket')]).steps
    report = apply_decisions(dataset, [(cat, 'delete')])               # seen in cat/ before the relabel
    assert [(s['source'], s['destination'].split('/')[0]) for s in report.steps] == [(step['destination'], '.quarantine')]
    undo(dataset, all=True)
    assert files(dataset) == before
