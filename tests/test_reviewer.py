"""The reviewer: its state driven directly, the widget driven from Python, and (slow) the real page in chromium,
served by Voila: mark, switch views and pages, apply, undo, with the files on disk checked at each step."""
import json, os, shutil, socket, subprocess, sys, tempfile, time
from pathlib import Path
import pytest
from pictaxon.core import sha256_file
from pictaxon.moves import Decision, read_log
from pictaxon.review import Reason, review
from pictaxon.reviewer import ALL, ReviewState, Reviewer, caption_html, view_rows
from pictaxon.train import sample_dataset

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = '/usr/bin/chromium'


def snapshot(dataset) -> list:
    """(path, sha256) of every photo under `dataset`, quarantine included."""
    return sorted((p.relative_to(dataset).as_posix(), sha256_file(p)) for p in Path(dataset).rglob('*.jpg'))


@pytest.fixture
def dataset(tmp_path) -> Path:
    """cat/coffee crops with an exact copy, a near copy and a cat photo in the coffee folder."""
    from pictaxon.images import jpeg_bytes, open_image
    ds = sample_dataset(tmp_path / 'photos', per_class=12, side=160)
    shutil.copy(ds / 'cat' / '003.jpg', ds / 'cat' / 'copy.jpg')
    (ds / 'cat' / 'smaller.jpg').write_bytes(jpeg_bytes(open_image(ds / 'cat' / '003.jpg').resize((120, 120)), quality=70))
    (ds / 'cat' / '010.jpg').rename(ds / 'coffee' / 'cat-010.jpg')
    return ds


def test_marks_survive_every_switch_of_view_class_and_page(dataset):
    state = ReviewState(review(dataset), per_page=2)
    assert state.view == 'suspects' and state.pages >= 2
    first = state.shown[0]['path']
    state.mark(first, 'delete')
    state.go(1)
    second = state.shown[0]['path']
    state.mark(second, 'relabel', 'coffee' if second.startswith('cat/') else 'cat')
    state.select(view='all', category='coffee')
    assert state.page == 0 and all(r['given'] == 'coffee' for r in state.rows())
    assert state.go(99) == state.pages - 1                   # clamped
    state.select(view='duplicates', category=ALL)
    assert [r['path'] for r in state.rows()] == ['cat/003.jpg', 'cat/copy.jpg', 'cat/smaller.jpg']
    state.select(view='suspects')
    assert state.choice(first) == 'delete' and len(state.value) == 2
    state.mark(first, 'keep')
    state.mark(second, 'relabel', second.split('/')[0])      # relabel to its own class: no change
    assert state.marks == {}


def test_accept_page_marks_deletes_and_relabels_but_not_checks(dataset):
    state = ReviewState(review(dataset), per_page=50)
    state.accept_page()
    rows = {r['path']: r for r in state.rows()}
    assert {'cat/copy.jpg', 'cat/smaller.jpg'} <= set(state.marks)
    for path, decision in state.marks.items():
        assert decision.action == rows[path]['suggestion'] and decision.new_label == rows[path]['suggested_label']
    assert not any(rows[p]['suggestion'] == 'check' for p in state.marks)


def test_apply_then_undo_through_the_state_restores_every_byte(dataset):
    before = snapshot(dataset)
    state = ReviewState(review(dataset))
    state.mark('cat/copy.jpg', 'delete')
    state.mark('coffee/cat-010.jpg', 'relabel', 'cat')
    assert 'Would apply: 1 delete, 1 relabel' in state.preview().summary() and snapshot(dataset) == before
    report = state.apply()
    assert report.moved == 2 and (dataset / 'cat' / 'cat-010.jpg').exists() and not (dataset / 'cat' / 'copy.jpg').exists()
    paths = {r['path'] for r in state.review.rows}
    assert 'cat/copy.jpg' not in paths and 'cat/cat-010.jpg' in paths
    moved = next(r for r in state.review.rows if r['path'] == 'cat/cat-010.jpg')
    assert moved['given'] == 'cat' and not any(r.group == 'label' for r in moved['reasons']) and state.marks == {}
    state.undo()
    assert snapshot(dataset) == before and 'coffee/cat-010.jpg' in {r['path'] for r in state.review.rows}
    assert [r['event'] for r in read_log(dataset)].count('commit') == 2


def test_views_filter_by_reason_group():
    rows = [{'path': 'a/1.jpg', 'given': 'a', 'predicted': 'b', 'confidence': 0.9, 'label_quality': 0.1, 'duplicate_of': '',
             'reasons': [Reason('label', 'the model says b (90%)', {'label_quality': 0.1})], 'split': ''},
            {'path': 'a/2.jpg', 'given': 'a', 'predicted': 'a', 'confidence': 0.9, 'label_quality': 0.9, 'duplicate_of': '',
             'reasons': [Reason('dark', 'brightness 5', {})], 'split': ''},
            {'path': 'a/3.jpg', 'given': 'a', 'predicted': 'a', 'confidence': 0.9, 'label_quality': 0.9, 'duplicate_of': '',
             'reasons': [], 'split': ''}]
    assert [r['path'] for r in view_rows(rows, 'labels')] == ['a/1.jpg']
    assert [r['path'] for r in view_rows(rows, 'quality')] == ['a/2.jpg']
    assert [r['path'] for r in view_rows(rows, 'mismatch')] == ['a/1.jpg']
    assert len(view_rows(rows, 'suspects')) == 2 and len(view_rows(rows, 'all')) == 3


def test_a_tile_caption_shows_the_evidence():
    row = {'path': 'coffee/<b>.jpg', 'given': 'coffee', 'predicted': 'cat', 'confidence': 0.97, 'split': 'out-of-fold',
           'reasons': [Reason('label', 'the model says cat (97%), coffee 3%', {})], 'suggestion': 'relabel',
           'suggested_label': 'cat'}
    html = caption_html(row)
    assert '&lt;b&gt;.jpg' in html and 'given: <b>coffee</b>' in html and '97%' in html and '(out-of-fold)' in html
    assert 'label: the model says cat (97%), coffee 3%' in html and 'suggests: relabel &rarr; cat' in html


def test_the_widget_drives_the_same_state(dataset):
    before = snapshot(dataset)
    reviewer = Reviewer(review(dataset), per_page=2)
    tile = reviewer.grid.children[0]
    tile.children[2].value = 'delete'                        # what choosing "delete" in the page does
    assert reviewer.state.marks[tile.children[2].path] == Decision(tile.children[2].path, 'delete')
    reviewer.next.click()
    reviewer.view.value = 'all'
    reviewer.category.value = 'coffee'
    reviewer.view.value = 'suspects'
    reviewer.category.value = ALL
    assert reviewer.page == 0 and reviewer.grid.children[0].children[2].value == 'delete'
    reviewer.apply_button.click()
    assert 'Will apply: 1 delete' in reviewer.preview.value and snapshot(dataset) == before
    reviewer.cancel.click()
    assert reviewer.preview.value == '' and len(reviewer.value) == 1
    reviewer.apply_button.click(); reviewer.confirm.click()
    assert snapshot(dataset) != before and reviewer.value == [] and 'Applied: 1 delete' in reviewer.status.value
    reviewer.undo_button.click()
    assert snapshot(dataset) == before and 'Undid: 1 restore' in reviewer.status.value


# ---------------------------------------------------------------- the real page in chromium

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def page_notebook(folder: Path, dataset: Path) -> Path:
    """A notebook page that shows the reviewer of `dataset`, as a person would write it."""
    source = (f"from pictaxon.review import review\nfrom pictaxon.reviewer import Reviewer\n"
              f"Reviewer(review({str(dataset)!r}), per_page=2, thumb_size=96)")
    nb = {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': 'a1b2c3d4', 'metadata': {}, 'outputs': [],
                     'source': source}],
          'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
          'nbformat': 4, 'nbformat_minor': 5}
    path = folder / 'review.ipynb'
    path.write_text(json.dumps(nb))
    return path


def wait_for(condition, timeout=30, what='condition'):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if condition(): return
        except FileNotFoundError: pass          # the page's kernel is moving files right now: look again
        time.sleep(0.2)
    raise AssertionError(f'timed out waiting for {what}')


@pytest.mark.slow
def test_the_reviewer_in_a_real_browser_marks_switches_applies_and_undoes(dataset, tmp_path):
    if not Path(CHROMIUM).exists(): pytest.fail(f'No chromium at {CHROMIUM}: `make test` installs it.')
    from playwright.sync_api import sync_playwright
    review(dataset)                                          # warms the feature cache the page's kernel reads
    before = snapshot(dataset)
    page_dir = tmp_path / 'page'; page_dir.mkdir()
    notebook, port = page_notebook(page_dir, dataset), free_port()
    log = tempfile.TemporaryFile('w+')
    server = subprocess.Popen([BIN / 'voila', notebook.name, '--no-browser', f'--port={port}', '--Voila.ip=127.0.0.1',
                               '--show_tracebacks=True'], cwd=page_dir, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, 'OMP_NUM_THREADS': '1'})
    try:
        def listening():
            try:
                with socket.create_connection(('127.0.0.1', port), timeout=1): return True
            except OSError: return False
        wait_for(listening, 90, 'voila to listen')
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                '--disable-sync', '--no-first-run'])
            page = browser.new_page()
            page.goto(f'http://127.0.0.1:{port}/', timeout=120_000)
            page.wait_for_selector('.pictaxon-tile', timeout=120_000)

            def tiles() -> list:
                # While the page swaps tiles, a tile may not have its caption or menu yet: such a page is "not
                # there yet" (an empty list), and the wait_for around each check simply looks again.
                return page.eval_on_selector_all('.pictaxon-tile', '''ts => {
                    const rows = ts.map(t => {
                        const caption = t.querySelector('.pictaxon-caption b'), menu = t.querySelector('select');
                        return caption && menu && menu.selectedIndex >= 0
                            ? [caption.textContent, menu.options[menu.selectedIndex].text] : null; });
                    return rows.includes(null) ? [] : rows; }''')

            def choose(index: int, label: str):
                page.locator('.pictaxon-tile select').nth(index).select_option(label=label)

            def view(label: str):
                page.locator('.pictaxon-reviewer select').first.select_option(label=label)

            def first_tile():
                shown = tiles()
                return shown[0] if shown else None
            wait_for(first_tile, 20, 'the first page')
            first = first_tile()[0]
            choose(0, 'delete')
            page.get_by_role('button', name='next >').click()
            wait_for(lambda: first_tile() and first_tile()[0] != first, 20, 'the second page')
            second = first_tile()[0]
            target = 'coffee' if second.startswith('cat/') else 'cat'
            choose(0, f'relabel: {target}')
            view('every photo')
            wait_for(lambda: first_tile() and first_tile()[0] not in (first, second), 20, 'the view "every photo"')
            view('all suspects, most suspect first')
            wait_for(lambda: first_tile() == [first, 'delete'], 20, 'the mark kept after switching views')
            assert snapshot(dataset) == before                   # marking moves nothing
            page.get_by_role('button', name='apply 2 marks...').click()
            page.wait_for_selector('text=Will apply: 1 delete, 1 relabel', timeout=20_000)
            page.get_by_role('button', name='confirm').click()
            wait_for(lambda: not (dataset / first).exists(), 30, 'the apply')
            wait_for(lambda: (dataset / target / Path(second).name).exists(), 30, 'the relabel')
            assert (dataset / '.quarantine' / first).exists()
            page.wait_for_selector('text=Applied: 1 delete, 1 relabel', timeout=20_000)
            page.get_by_role('button', name='undo last apply').click()
            wait_for(lambda: snapshot(dataset) == before, 30, 'the undo')
            page.wait_for_selector('text=Undid: 2 restore', timeout=20_000)
            browser.close()
    finally:
        server.terminate()
        try: server.wait(20)
        except subprocess.TimeoutExpired: server.kill(); server.wait()
        log.seek(0)
        print(log.read()[-3000:])
