"""The app: its pieces without a browser, then the real page served by `pictaxon app` in Debian's chromium.

The browser tests start the app with the command `make app` runs (`pictaxon app`, on a free port), drive
chromium through the playwright package, and read what the page shows. They are marked slow.
"""
import csv, hashlib, io, json, os, shutil, socket, subprocess, sys, tempfile, time
from pathlib import Path
import pytest
from PIL import Image

from pictaxon.app import ClassifierApp, FeedbackStore, WEBSOCKET_MAX_BYTES, MAX_PHOTO_BYTES
from webserver import bomb_png

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ARTIFACTS = ROOT / 'test-artifacts'
CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--no-first-run']
CLASSES = ['black', 'grizzly', 'teddy']
DEFAULT_MODEL = ROOT / 'models' / 'bears.pkl'


# ---------------------------------------------------------------- photos and files the tests upload

def bear(bears_dir, cls, index=0) -> Path:
    return sorted((bears_dir / cls).glob('*.jpg'))[index]


def named_copy(bears_dir, folder: Path, cls: str, index: int = 0) -> Path:
    """A bear photo copied under a name that says its class, so cards can be matched by name."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f'{cls}-{index}.jpg'
    if not target.exists(): shutil.copy(bear(bears_dir, cls, index), target)
    return target


def phone_photo(bears_dir, folder: Path) -> Path:
    """A 12-megapixel, 13 MB JPEG (sensor-like noise): over Tornado's default 10 MB websocket limit."""
    import numpy as np
    path = folder / 'phone-grizzly.jpg'
    if not path.exists():
        image = Image.open(bear(bears_dir, 'grizzly', 1)).convert('RGB').resize((4000, 3000), Image.BICUBIC)
        noisy = np.asarray(image).astype(np.int16) + np.random.default_rng(0).normal(0, 12, (3000, 4000, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, 'JPEG', quality=100)
    assert 10 * 1024**2 < path.stat().st_size < MAX_PHOTO_BYTES
    return path


def bad_files(folder: Path, a_photo: Path) -> dict:
    """name -> (bytes, the start of the message its card must show)."""
    jpeg = a_photo.read_bytes()
    ico = io.BytesIO(); Image.new('RGB', (32, 32), 'red').save(ico, 'ICO')
    return {
        'notes.jpg': (b'Shopping list: honey, salmon, berries.\n', 'This is a text file, not a photo.'),
        'page.jpg': (b'<!DOCTYPE html><html><body>Not found</body></html>', 'This is a web page (HTML)'),
        'cut.jpg': (jpeg[:len(jpeg) // 2], 'This image file is cut short (truncated)'),
        'empty.jpg': (b'', 'This file is empty'),
        'bomb.png': (bomb_png(), 'This image declares too many pixels to open safely (a decompression bomb).'),
        'icon.ico': (ico.getvalue(), 'ICO images are not supported'),
        'huge.jpg': (b'\xff\xd8\xff' + os.urandom(MAX_PHOTO_BYTES + 1024), 'This file is over the 20 MB limit.'),
    }


# ---------------------------------------------------------------- a tiny model, trained once per session

@pytest.fixture(scope='session')
def tiny_model(tmp_path_factory, bears_dir) -> Path:
    """A real model in seconds: 8 photos per class at 64 px, one epoch.

    Pretrained (the efficientnet-lite0 weights installed from PyPI), because from random weights one epoch
    gives the same probabilities for every photo, which would let a mixed-up page pass.
    """
    from pictaxon.train import train
    from pictaxon.export import export_model
    folder = tmp_path_factory.mktemp('tiny')
    for cls in CLASSES:
        (folder / 'data' / cls).mkdir(parents=True)
        for photo in sorted((bears_dir / cls).glob('*.jpg'))[:8]: shutil.copy(photo, folder / 'data' / cls / photo.name)
    learn = train(folder / 'data', pretrained=True, size=64, epochs=1, seed=0, batch_size=8, progress=False)
    return export_model(learn, folder / 'tiny.pkl')


@pytest.fixture(scope='session')
def expected(tiny_model):
    """What `pictaxon.export.predict` says about a file: the page must show exactly this."""
    from pictaxon.export import load_model, predict
    model = load_model(tiny_model)
    def expect(path: Path):
        prediction = predict(model, [Path(path).read_bytes()])[0]
        return prediction.label, dict(prediction.probabilities)
    return expect


# ---------------------------------------------------------------- without a browser

def pins(path: Path) -> dict:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split('#')[0].strip()
        if '==' in line: name, version = line.split('=='); found[name.strip().lower().replace('_', '-')] = version.strip()
    return found


def test_binder_installs_exactly_the_pinned_versions():
    root, binder = pins(ROOT / 'requirements.txt'), pins(ROOT / 'binder' / 'requirements.txt')
    assert root, 'requirements.txt has no pins'
    differ = {name: (root.get(name), binder.get(name)) for name in root.keys() | binder.keys() if root.get(name) != binder.get(name)}
    assert not differ, f'binder/requirements.txt and requirements.txt disagree (root, binder): {differ}'
    extra = [line for line in (ROOT / 'binder' / 'requirements.txt').read_text().splitlines()
             if line.strip() and not line.startswith('#') and '==' not in line]
    assert extra == ['--extra-index-url https://download.pytorch.org/whl/cpu']


def test_binder_runs_this_python_and_raises_the_upload_limit():
    assert (ROOT / 'binder' / 'runtime.txt').read_text().strip() == f'python-{sys.version_info.major}.{sys.version_info.minor}'
    config = json.loads((ROOT / 'binder' / 'jupyter_config.json').read_text())
    assert config['ServerApp']['tornado_settings']['websocket_max_message_size'] >= WEBSOCKET_MAX_BYTES
    post_build = (ROOT / 'binder' / 'postBuild')
    assert os.access(post_build, os.X_OK) and 'pip install --no-deps -e .' in post_build.read_text()
    assert 'urlpath=voila%2Frender%2Fapp.ipynb' in (ROOT / 'README.md').read_text()


def test_every_bad_file_gets_its_own_message_and_the_page_carries_on(tmp_path, bears_dir):
    app = ClassifierApp(model_error='no model needed: these files never reach it', feedback_dir=tmp_path)
    files = bad_files(tmp_path, bear(bears_dir, 'black'))
    cards = app.classify([(name, data) for name, (data, _) in files.items()])
    for card, (name, (_, message)) in zip(cards, files.items()):
        assert card.name == name and card.status == 'error'
        assert card.error.startswith(message), (name, card.error)
    assert len(app.cards) == len(files) and not any('Traceback' in (c.error or '') for c in cards)


def test_a_missing_model_says_so_and_switches_the_upload_off(tmp_path):
    app = ClassifierApp.from_path(tmp_path / 'no-such-model.pkl', feedback_dir=tmp_path)
    assert app.upload.disabled and app.model is None
    assert 'The model could not be loaded. There is no model file at' in app.model_info.value


def test_feedback_saves_an_upright_jpeg_named_by_its_hash_and_a_row(tmp_path, bears_dir):
    exif = Image.Exif(); exif[0x0112] = 6                        # "rotate 90 degrees clockwise", as phones write
    buffer = io.BytesIO(); Image.open(bear(bears_dir, 'grizzly')).save(buffer, 'JPEG', exif=exif)
    store = FeedbackStore(tmp_path / 'feedback')
    path = store.save(buffer.getvalue(), corrected='grizzly', predicted='black', source='IMG_1.jpg',
                      probabilities=[('black', 0.7), ('grizzly', 0.2), ('teddy', 0.1)])
    assert path.parent == tmp_path / 'feedback' / 'grizzly'
    assert path.name == hashlib.sha256(path.read_bytes()).hexdigest() + '.jpg'
    original = Image.open(bear(bears_dir, 'grizzly'))
    assert Image.open(path).size == (original.height, original.width)      # turned upright, EXIF applied
    (row,) = store.rows()
    assert (row['file'], row['predicted'], row['corrected'], row['probability'], row['source']) == \
        (f'grizzly/{path.name}', 'black', 'grizzly', '0.7000', 'IMG_1.jpg')
    assert json.loads(row['probabilities']) == {'black': 0.7, 'grizzly': 0.2, 'teddy': 0.1}


def test_feedback_that_cannot_be_written_says_so_and_leaves_no_partial_file(tmp_path, bears_dir):
    (tmp_path / 'feedback').write_text('a file where the feedback folder should be')
    with pytest.raises(Exception, match='Nothing was written'):
        FeedbackStore(tmp_path / 'feedback').save(bear(bears_dir, 'teddy').read_bytes(), corrected='teddy')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['feedback']


def test_make_app_serves_with_pictaxon_app_and_make_test_brings_chromium():
    dry_run = lambda target: subprocess.run(['make', '--no-print-directory', '-n', target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert dry_run('app').strip().splitlines()[-1] == '.venv/bin/pictaxon app'
    assert 'command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)' in dry_run('pytest')


def test_pictaxon_app_help_names_its_options():
    out = subprocess.run([BIN / 'pictaxon', 'app', '--help'], capture_output=True, text=True, check=True).stdout
    for option in ('--model', '--port', '--feedback'): assert option in out


@pytest.mark.slow
def test_the_app_in_python_shows_what_predict_says(tmp_path, bears_dir, tiny_model, expected):
    from pictaxon.export import load_model
    app = ClassifierApp(load_model(tiny_model), feedback_dir=tmp_path / 'feedback')
    photos = [named_copy(bears_dir, tmp_path, cls, 20) for cls in CLASSES]
    cards = app.classify([(p.name, p.read_bytes()) for p in photos] + [('notes.jpg', b'not a photo')])
    for card, photo in zip(cards, photos):
        label, probabilities = expected(photo)
        assert card.label == label and dict(card.probabilities) == pytest.approx(probabilities, abs=1e-4)
        shown = [p for _, p in card.probabilities]
        assert shown == sorted(shown, reverse=True)
    assert cards[3].error == 'This is a text file, not a photo.'
    cards[0].open_correction()
    saved = cards[0].save_feedback('teddy')
    assert saved.parent.name == 'teddy' and app.feedback.rows()[-1]['source'] == 'black-20.jpg'


# ---------------------------------------------------------------- the real page in chromium

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


class Server:
    """A server process started for a test: waits for its port, and stops with its kernels."""
    def __init__(self, command, port, env=None, cwd=ROOT):
        self.port, self.log = port, tempfile.TemporaryFile('w+')
        self.process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})},
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.process.poll() is not None: pytest.fail(f'{command} exited:\n{self.output()}')
            try:
                with socket.create_connection(('127.0.0.1', port), timeout=1): return
            except OSError: time.sleep(0.2)
        self.stop(); pytest.fail(f'{command} did not listen on {port} within 90 s:\n{self.output()}')

    def output(self) -> str:
        self.log.flush(); self.log.seek(0); return self.log.read()[-5000:]

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try: self.process.wait(20)
            except subprocess.TimeoutExpired: self.process.kill(); self.process.wait()


def serve_app(model, feedback, port=None) -> Server:
    """The app, started the way `make app` starts it."""
    port = port or free_port()
    return Server([BIN / 'pictaxon', 'app', '--model', str(model), '--port', str(port)], port,
                  env={'PICTAXON_FEEDBACK': str(feedback)})


@pytest.fixture(scope='module')
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f'No chromium at {CHROMIUM}: `make test` installs it (apt-get install -y chromium).')
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope='module')
def app_server(tmp_path_factory, tiny_model):
    feedback = tmp_path_factory.mktemp('feedback')
    server = serve_app(tiny_model, feedback)
    server.feedback = feedback
    yield server
    server.stop()


def open_page(browser, url, width=1100):
    page = browser.new_page(viewport={'width': width, 'height': 900})
    page.goto(url, timeout=60_000)
    page.wait_for_selector('.widget-upload', state='visible', timeout=60_000)
    return page


def choose(page, paths):
    """Pick files in the upload widget the way a user does (ipywidgets 8 has no input[type=file] to fill)."""
    with page.expect_file_chooser() as chooser:
        page.click('.widget-upload')
    chooser.value.set_files([str(p) for p in paths])


def wait_for_cards(page, count, timeout=120_000):
    """Wait until `count` cards have finished (a label or a message), then return what every card shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    try:
        page.wait_for_function(
            """n => document.querySelectorAll('.pictaxon-card .pictaxon-label, .pictaxon-card .pictaxon-error').length >= n""",
            arg=count, timeout=timeout)
    except PlaywrightTimeout:
        pytest.fail(f'{count} finished cards did not show within {timeout / 1000:.0f} s; the page shows:\n'
                    f'{page.inner_text("body")[:3000]}')
    return page.evaluate("""() => [...document.querySelectorAll('.pictaxon-card')].map(card => {
        const label = card.querySelector('.pictaxon-label'), error = card.querySelector('.pictaxon-error');
        return {name: card.querySelector('.pictaxon-name').textContent,
                label: label && label.dataset.label, probability: label && +label.dataset.probability,
                error: error && error.textContent,
                thumbnail: !!card.querySelector('img.pictaxon-thumb') && card.querySelector('img.pictaxon-thumb').offsetHeight > 0,
                bars: [...card.querySelectorAll('.pictaxon-bar')].map(b => [b.dataset.class, +b.dataset.probability,
                       b.querySelector('.pictaxon-bar-fill').getBoundingClientRect().width])};
    })""")


def assert_no_traceback(page):
    text = page.inner_text('body')
    for sign in ('Traceback', 'File "', 'Error:', 'Exception'):
        assert sign not in text, f'the page shows {sign!r}:\n{text[:2000]}'


def assert_shows(card, expected_label, expected_probabilities):
    assert card['label'] == expected_label, card
    assert card['thumbnail'], f'{card["name"]} has no thumbnail'
    assert sorted(name for name, _, _ in card['bars']) == CLASSES, card['bars']
    shown = [p for _, p, _ in card['bars']]
    assert shown == sorted(shown, reverse=True), 'bars are not sorted high to low'
    for name, probability, _ in card['bars']: assert probability == pytest.approx(expected_probabilities[name], abs=1e-3)
    widths = [width for _, _, width in card['bars']]
    assert widths == sorted(widths, reverse=True) and widths[0] > 0, 'bar lengths do not follow the probabilities'


@pytest.mark.slow
def test_a_photo_gets_its_label_and_a_bar_for_every_class(browser, app_server, bears_dir, tmp_path, expected, tiny_model):
    page = open_page(browser, f'http://127.0.0.1:{app_server.port}/')
    # The page shows before the model has loaded; the line about the model follows.
    page.wait_for_selector('.pictaxon-model:has-text("Knows 3 classes")', timeout=60_000)
    card = json.loads(tiny_model.with_suffix('.json').read_text())
    assert page.inner_text('.pictaxon-model') == (
        f'Knows 3 classes: black, grizzly, teddy. Labels {card["valid_accuracy"]:.0%} of {card["n_valid"]} validation '
        'photos right. Built from the 24 photos in data (efficientnet_lite0).')
    photo = named_copy(bears_dir, tmp_path, 'grizzly', 3)
    choose(page, [photo])
    (shown,) = wait_for_cards(page, 1)
    assert_shows(shown, *expected(photo))
    assert shown['name'] == photo.name
    assert_no_traceback(page)
    page.click('text=Clear')
    page.wait_for_function("() => document.querySelectorAll('.pictaxon-card').length === 0")
    page.close()


@pytest.mark.slow
def test_several_photos_at_once_including_a_13_mb_phone_photo(browser, app_server, bears_dir, tmp_path, expected):
    page = open_page(browser, f'http://127.0.0.1:{app_server.port}/')
    photos = [named_copy(bears_dir, tmp_path, cls, i) for cls in CLASSES for i in (5, 6)] + [phone_photo(bears_dir, tmp_path)]
    choose(page, photos)
    cards = {card['name']: card for card in wait_for_cards(page, len(photos))}
    assert sorted(cards) == sorted(p.name for p in photos)
    for photo in photos: assert_shows(cards[photo.name], *expected(photo))
    page.close()


@pytest.mark.slow
def test_bad_files_get_a_clear_message_and_a_valid_photo_still_works(browser, app_server, bears_dir, tmp_path, expected):
    page = open_page(browser, f'http://127.0.0.1:{app_server.port}/')
    (tmp_path / 'notes.jpg').write_text('Shopping list: honey, salmon, berries.\n')
    choose(page, [tmp_path / 'notes.jpg'])
    (card,) = wait_for_cards(page, 1)
    assert card['error'] == 'This is a text file, not a photo.' and card['label'] is None and not card['bars']
    # The rest of the bad files, a 20 MB+ one included, in one go: each its own message.
    files = bad_files(tmp_path, bear(bears_dir, 'black'))
    for name, (data, _) in files.items(): (tmp_path / name).write_bytes(data)
    choose(page, [tmp_path / name for name in files if name != 'notes.jpg'])
    shown = {card['name']: card for card in wait_for_cards(page, len(files))}
    for name, (_, message) in files.items(): assert shown[name]['error'].startswith(message), shown[name]
    photo = named_copy(bears_dir, tmp_path, 'teddy', 2)
    choose(page, [photo])
    cards = wait_for_cards(page, len(files) + 1)
    assert cards[0]['name'] == photo.name                     # newest first
    assert_shows(cards[0], *expected(photo))
    assert_no_traceback(page)
    page.close()


@pytest.mark.slow
def test_two_pages_at_once_each_get_their_own_results(browser, app_server, bears_dir, tmp_path, expected):
    url = f'http://127.0.0.1:{app_server.port}/'
    first, second = open_page(browser, url), open_page(browser, url)
    black, teddy = named_copy(bears_dir, tmp_path, 'black', 9), named_copy(bears_dir, tmp_path, 'teddy', 9)
    choose(first, [black]); choose(second, [teddy])
    (on_first,), (on_second,) = wait_for_cards(first, 1), wait_for_cards(second, 1)
    assert on_first['name'] == black.name and on_second['name'] == teddy.name
    assert_shows(on_first, *expected(black)); assert_shows(on_second, *expected(teddy))
    time.sleep(0.5)                                           # nothing from one page turns up late on the other
    assert len(wait_for_cards(first, 1)) == 1 and len(wait_for_cards(second, 1)) == 1
    first.close(); second.close()


@pytest.mark.slow
def test_wrong_label_saves_the_photo_and_a_row_for_retraining(browser, app_server, bears_dir, tmp_path, expected):
    page = open_page(browser, f'http://127.0.0.1:{app_server.port}/')
    photo = named_copy(bears_dir, tmp_path, 'grizzly', 11)
    choose(page, [photo])
    (card,) = wait_for_cards(page, 1)
    corrected = next(cls for cls in CLASSES if cls != card['label'])
    page.click('.pictaxon-card .pictaxon-wrong')
    page.select_option('.pictaxon-card select', corrected)
    page.click('.pictaxon-card .pictaxon-save')
    page.wait_for_selector('.pictaxon-saved', timeout=30_000)
    assert f'Saved as {corrected}' in page.inner_text('.pictaxon-saved')
    (saved,) = (app_server.feedback / corrected).glob('*.jpg')
    assert saved.name == hashlib.sha256(saved.read_bytes()).hexdigest() + '.jpg'
    assert Image.open(saved).size == Image.open(photo).size
    with open(app_server.feedback / 'feedback.csv', newline='') as f: rows = list(csv.DictReader(f))
    assert [(r['file'], r['predicted'], r['corrected'], r['source']) for r in rows] == \
        [(f'{corrected}/{saved.name}', card['label'], corrected, photo.name)]
    assert json.loads(rows[0]['probabilities']) == pytest.approx(expected(photo)[1], abs=1e-4)
    page.close()


@pytest.mark.slow
def test_a_model_that_fails_to_load_gives_a_page_that_says_so(browser, tmp_path):
    (tmp_path / 'broken.pkl').write_text('<html>this is not a model</html>')
    server = serve_app(tmp_path / 'broken.pkl', tmp_path / 'feedback')
    try:
        page = open_page(browser, f'http://127.0.0.1:{server.port}/')
        page.wait_for_selector('.pictaxon-model .pictaxon-error', timeout=60_000)
        text = page.inner_text('.pictaxon-model')
        assert text.startswith('The model could not be loaded.') and 'broken.pkl is not a model file' in text
        assert page.locator('.widget-upload').is_disabled()
        assert_no_traceback(page)
        page.close()
    finally: server.stop()


@pytest.mark.slow
def test_the_default_model_names_real_bears_and_the_page_fits_a_phone(browser, bears_dir, tmp_path):
    """The model `make app` serves, on real photos; screenshots for people to look at."""
    assert DEFAULT_MODEL.exists(), f'{DEFAULT_MODEL} is missing: it is part of the repository (pictaxon train writes it).'
    server = Server([BIN / 'pictaxon', 'app', '--port', str(port := free_port())], port,
                    env={'PICTAXON_FEEDBACK': str(tmp_path / 'feedback'), 'PICTAXON_MODEL': ''})
    try:
        page = open_page(browser, f'http://127.0.0.1:{port}/')
        photos = [named_copy(bears_dir, tmp_path, cls, i) for cls in CLASSES for i in (30, 31)]
        (tmp_path / 'notes.jpg').write_text('not a photo')
        choose(page, photos + [tmp_path / 'notes.jpg'])
        cards = {card['name']: card for card in wait_for_cards(page, len(photos) + 1)}
        for photo in photos:
            card = cards[photo.name]
            assert card['label'] == photo.name.split('-')[0], card
            assert sorted(name for name, _, _ in card['bars']) == CLASSES and card['thumbnail']
        assert cards['notes.jpg']['error'] == 'This is a text file, not a photo.'
        assert_no_traceback(page)
        page.click('.pictaxon-card .pictaxon-wrong')                    # the class picker, open in the picture
        ARTIFACTS.mkdir(exist_ok=True)
        # Voila scrolls inside its own panel: make the window as tall as the app to photograph all of it.
        tall = lambda: page.evaluate("() => document.querySelector('.pictaxon-app').scrollHeight") + 80
        page.set_viewport_size({'width': 1100, 'height': tall()})
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / 'app.png'))
        page.set_viewport_size({'width': 390, 'height': 844})           # a phone
        page.wait_for_timeout(300)
        page.set_viewport_size({'width': 390, 'height': min(tall(), 6000)})
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / 'app-phone.png'))
        layout = page.evaluate("""() => ({scroll: document.documentElement.scrollWidth,
            cards: [...document.querySelectorAll('.pictaxon-card')].map(c => c.getBoundingClientRect().toJSON())})""")
        assert layout['scroll'] <= 390, 'the page scrolls sideways on a phone'
        assert all(c['right'] <= 390 for c in layout['cards'])
        assert len({round(c['left']) for c in layout['cards']}) == 1, 'cards did not wrap to one column'
        page.close()
    finally: server.stop()


@pytest.mark.slow
def test_the_binder_route_serves_the_app_and_takes_phone_photos(browser, bears_dir, tmp_path, tiny_model, expected):
    """What the badge opens: `jupyter server` with Voila's extension at /voila/render/app.ipynb, configured
    the way binder/postBuild configures it (binder/jupyter_config.json in the Jupyter config folder)."""
    config = tmp_path / 'jupyter-config'; config.mkdir()
    shutil.copy(ROOT / 'binder' / 'jupyter_config.json', config / 'jupyter_server_config.json')
    port = free_port()
    server = Server([BIN / 'jupyter', 'server', '--no-browser', f'--port={port}', '--IdentityProvider.token=',
                     '--allow-root'], port, env={'JUPYTER_CONFIG_DIR': str(config), 'PICTAXON_MODEL': str(tiny_model),
                                                 'PICTAXON_FEEDBACK': str(tmp_path / 'feedback')})
    try:
        page = open_page(browser, f'http://127.0.0.1:{port}/voila/render/app.ipynb')
        photo = phone_photo(bears_dir, tmp_path)
        choose(page, [photo])
        (card,) = wait_for_cards(page, 1)
        assert_shows(card, *expected(photo))
        assert_no_traceback(page)
        page.close()
    finally: server.stop()
