"""Nothing gathered or cleaned is ever lost, duplicated, left stuck, or out of step with the manifest: a property
test (hypothesis) over random sequences of gather (your own folder and a URL list served on 127.0.0.1), relabel,
delete, apply, undo, re-gather and applies killed with SIGKILL half-way, on photos every install has.

Each example gathers a small dataset (phase 1), snapshots it, then runs random cleaning steps (phase 2). After
every step: every photo ever kept is in exactly one place (a class folder or the quarantine), the multiset of
sha256 on disk never shrinks, and the manifest agrees with the files. At the end `pictaxon clean --undo --all`
must give back the snapshot byte for byte, manifest included."""
import json, os, shutil, signal, subprocess, sys, tempfile, textwrap
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from pictaxon.cli import main
from pictaxon.core import QUARANTINE_DIR, read_manifest, sha256_file
from pictaxon.gather import gather
from pictaxon.moves import apply_decisions, undo
from webserver import PhotoServer, sample_photos

CLASSES = ('cat', 'coffee', 'rocket', 'astronaut')

KILLED_APPLY = textwrap.dedent('''
    import json, os, signal, sys
    from pictaxon.moves import apply_decisions
    dataset, k, decisions = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    real_rename, moves = os.rename, []
    def rename(src, dst):
        if len(moves) == k: os.kill(os.getpid(), signal.SIGKILL)      # dies here: no cleanup, no finally
        moves.append(src); real_rename(src, dst)
    os.rename = rename
    apply_decisions(dataset, [tuple(d) for d in decisions])
''')


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "Sample photos, a URL server on 127.0.0.1 and the killed-apply script, shared by every example."
    photos = sample_photos(3)
    root = tmp_path_factory.mktemp('world')
    (root / 'killed_apply.py').write_text(KILLED_APPLY)
    with PhotoServer(photos) as server:
        yield World(photos=photos, server=server, script=root / 'killed_apply.py')


def on_disk(dataset) -> dict:
    "{dataset-relative path: sha256} of every photo in the class folders and the quarantine."
    return {p.relative_to(dataset).as_posix(): sha256_file(p) for p in Path(dataset).rglob('*.jpg')}


def kept_photos(dataset) -> list:
    return sorted(f for f in on_disk(dataset) if not f.startswith(QUARANTINE_DIR + '/'))


class World(dict):
    "The shared fixtures; a short repr, so that a failing example prints readably."
    def __repr__(self): return f'<world: {len(self["photos"])} photos served at {self["server"].url}>'


class Checker:
    "The invariants, with what they remember between steps."
    def __init__(self, dataset):
        self.dataset, self.ever_kept, self.last = dataset, set(), Counter()

    def photos(self, where: str):
        files = on_disk(self.dataset)
        now = Counter(files.values())
        shrunk = self.last - now
        assert not shrunk, f'after {where}: photos lost {dict(shrunk)}'
        self.last = now
        self.ever_kept |= {r['sha256'] for r in read_manifest(self.dataset) if r['status'] == 'kept'}
        for sha in self.ever_kept:
            places = [f for f, h in files.items() if h == sha]
            assert len(places) == 1, f'after {where}: a kept photo is in {len(places)} places: {places}'

    def manifest(self, where: str):
        files = on_disk(self.dataset)
        rows = [r for r in read_manifest(self.dataset) if r['file']]
        claimed = [r['file'] for r in rows]
        assert len(claimed) == len(set(claimed)), f'after {where}: two rows claim one file'
        assert set(claimed) == set(files), f'after {where}: manifest {set(claimed) ^ set(files)} disagrees with the files'
        for r in rows:
            assert files[r['file']] == r['sha256'], f"after {where}: {r['file']} is not the photo its row says"
            in_quarantine = r['file'].startswith(QUARANTINE_DIR + '/')
            assert in_quarantine == r['status'].startswith('quarantined'), f'after {where}: {r}'

    def all(self, where: str):
        self.photos(where)
        self.manifest(where)


setup = st.fixed_dictionaries({
    'in_folder': st.lists(st.booleans(), min_size=12, max_size=12),   # which sample photos come from the folder
    'ambiguous': st.booleans(),                                        # a near copy listed under another class
})
step = st.one_of(
    st.tuples(st.just('relabel'), st.integers(0, 50), st.sampled_from(CLASSES)),
    st.tuples(st.just('delete'), st.integers(0, 50)),
    st.tuples(st.just('batch'), st.lists(st.tuples(st.integers(0, 50), st.sampled_from(CLASSES + ('delete',))),
                                         min_size=1, max_size=4)),
    st.tuples(st.just('killed'), st.lists(st.tuples(st.integers(0, 50), st.sampled_from(CLASSES + ('delete',))),
                                          min_size=2, max_size=4), st.integers(0, 3)),
    st.tuples(st.just('undo'), st.integers(1, 2)),
    st.tuples(st.just('regather'), st.sampled_from(['folder', 'urls'])),
)


def decision(dataset, index: int, target: str):
    kept = kept_photos(dataset)
    if not kept: return None
    path = kept[index % len(kept)]
    if target == 'delete': return (path, 'delete')
    return (path, 'relabel', target) if target != path.split('/')[0] else (path, 'delete')


def run_example(world, plan, steps):
    photos, server = world['photos'], world['server']
    root = Path(tempfile.mkdtemp(prefix='pictaxon-property-'))
    try:
        dataset, mine = root / 'photos', root / 'mine'
        names = sorted(photos)
        for name, from_folder in zip(names, plan['in_folder']):
            if from_folder:
                (mine / name.split('-')[0]).mkdir(parents=True, exist_ok=True)
                (mine / name.split('-')[0] / name).write_bytes(photos[name])
        rows = [(n.split('-')[0], f'{server.url}/photo/{n}') for n, f in zip(names, plan['in_folder']) if not f]
        if plan['ambiguous']: rows.append(('rocket', f'{server.url}/near/cat-0.jpg'))
        urls = root / 'urls.csv'
        urls.write_text('class,url\n' + ''.join(f'{c},{u}\n' for c, u in rows))
        check = Checker(dataset)

        # Phase 1: gather from both sources (twice: a re-run adds nothing).
        if mine.is_dir(): gather(dataset, from_folder=mine, progress=False)
        if rows: gather(dataset, urls_file=urls, progress=False, allow_private=True)
        if mine.is_dir(): assert gather(dataset, from_folder=mine, progress=False).counts == {}
        check.all('gathering')
        snapshot, manifest = on_disk(dataset), (dataset / 'manifest.csv').read_bytes()

        # Phase 2: cleaning, crashes, undos and re-gathers, checked after every step.
        for number, (kind, *args) in enumerate(steps):
            where = f'step {number} {kind}{args}'
            if kind in ('relabel', 'delete'):
                d = decision(dataset, args[0], args[1] if kind == 'relabel' else 'delete')
                if d: apply_decisions(dataset, [d])
            elif kind == 'batch':                                      # one decision a photo, plus a duplicated row
                batch = list({d[0]: d for d in (decision(dataset, i, t) for i, t in args[0]) if d}.values())
                apply_decisions(dataset, batch + batch[:1])
            elif kind == 'killed':
                batch = list({d[0]: d for d in (decision(dataset, i, t) for i, t in args[0]) if d}.values())
                done = subprocess.run([sys.executable, str(world['script']), str(dataset), str(args[1]), json.dumps(batch)],
                                      capture_output=True, text=True, timeout=60)
                assert done.returncode in (0, -signal.SIGKILL), done.stderr
                check.photos(where + ' (killed)')
                apply_decisions(dataset, [])                           # the next command finishes the batch
            elif kind == 'undo':
                undo(dataset, args[0])
            else:
                again = gather(dataset, progress=False, allow_private=True,
                               **({'from_folder': mine} if args[0] == 'folder' else {'urls_file': urls}))
                if (args[0] == 'folder' and mine.is_dir()) or (args[0] == 'urls' and rows):
                    assert again.counts == {}, f'{where}: a re-run of gather changed the dataset: {again.counts}'
            check.all(where)

        # `undo --all` gives back the gathered dataset, byte for byte.
        assert main(['clean', str(dataset), '--undo', '--all']) == 0
        assert on_disk(dataset) == snapshot
        assert (dataset / 'manifest.csv').read_bytes() == manifest
        assert not [p for p in dataset.rglob('*') if p.name.endswith(('.lock', '.partial'))]
    finally:
        shutil.rmtree(root, ignore_errors=True)


QUICK = settings(max_examples=12, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@QUICK
@given(plan=setup, steps=st.lists(step, min_size=3, max_size=7))
def test_nothing_is_lost_duplicated_or_stuck(world, plan, steps):
    run_example(world, plan, steps)


@pytest.mark.slow
@SLOW
@given(plan=setup, steps=st.lists(step, min_size=5, max_size=15))
def test_nothing_is_lost_duplicated_or_stuck_many_examples(world, plan, steps):
    run_example(world, plan, steps)
