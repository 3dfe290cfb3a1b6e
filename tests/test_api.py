"""`pictaxon serve` over real HTTP: uvicorn in a subprocess on a free 127.0.0.1 port, driven with httpx. Good photos
get the labels plain `predict` gives, bad files get error entries (never a 500), a huge body gets 413 with a JSON
message, and 50 concurrent clients are all answered."""
import asyncio, io, os, socket, subprocess, sys, time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from pictaxon.api import per_source
from pictaxon.serving import load_predictor, predict

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / 'models' / 'bears.json'
PICTAXON = str(Path(sys.executable).with_name('pictaxon'))
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


def sample_photos() -> dict:
    "Real photos every install has (scikit-image's samples) as JPEG and PNG bytes."
    from skimage import data
    photos = {}
    for name in ['astronaut', 'chelsea', 'coffee', 'rocket', 'camera']:
        buffer = io.BytesIO()
        Image.fromarray(getattr(data, name)()).save(buffer, 'PNG' if name == 'camera' else 'JPEG')
        photos[f'{name}.{"png" if name == "camera" else "jpg"}'] = buffer.getvalue()
    return photos


def bad_files(photos) -> dict:
    good = photos['chelsea.jpg']
    return {'notes.txt': b'a shopping list, not a photo', 'page.jpg': b'<!doctype html><html>404</html>',
            'empty.jpg': b'', 'cut.jpg': good[:len(good) // 3], 'noise.bin': bytes(np.random.RandomState(0).randint(0, 256, 5000, dtype=np.uint8))}


SERVER = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def server():
    port = free_port()
    process = subprocess.Popen([PICTAXON, 'serve', str(MODEL), '--port', str(port), '--max-request-mb', '30'],
                               env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f'http://127.0.0.1:{port}'
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None: pytest.fail(f'pictaxon serve exited:\n{process.stdout.read()}')
        try:
            if httpx.get(f'{url}/health', timeout=2).status_code == 200: break
        except httpx.TransportError: time.sleep(0.3)
    else: pytest.fail('pictaxon serve did not answer /health within 120 s')
    SERVER['pid'] = process.pid
    yield url
    process.terminate()
    try: process.wait(10)
    except subprocess.TimeoutExpired: process.kill()


@pytest.fixture(scope='module')
def photos(): return sample_photos()


@pytest.fixture(scope='module')
def expected(photos):
    "What plain `predict` says about each photo, in this process."
    predictor = load_predictor(MODEL)
    return dict(zip(photos, predict(predictor, list(photos.values()))))


def test_server_is_light(server):
    "The serving process runs ONNX Runtime and never imports torch: a few hundred MB, not the 600+ of torch."
    import psutil
    assert httpx.get(f'{server}/health').json()['engine'] == 'onnx'
    assert psutil.Process(SERVER['pid']).memory_info().rss < 400 * 1024**2


def test_health(server):
    health = httpx.get(f'{server}/health').json()
    assert health['status'] == 'ok' and health['model'] == 'bears'
    assert health['classes'] == ['black', 'grizzly', 'teddy'] and len(health['class_names']) == 3
    assert health['engine'] in ('onnx', 'torch', 'fastai')


def test_photos_get_the_labels_predict_gives(server, photos, expected):
    answer = httpx.post(f'{server}/predict', files=[('photo', (name, content)) for name, content in photos.items()],
                        timeout=60)
    assert answer.status_code == 200
    results = answer.json()['results']
    assert [r['file'] for r in results] == list(photos)
    for r in results:
        p = expected[r['file']]
        assert r['error'] is None and r['label'] == p.label
        assert r['probability'] == pytest.approx(p.probability, abs=1e-4)
        assert [q['label'] for q in r['probabilities']] == [c for c, _ in p.probabilities]
        assert sum(q['probability'] for q in r['probabilities']) == pytest.approx(1, abs=1e-3)
        assert isinstance(r['unknown'], bool) and r['name']


def test_raw_body_is_one_photo(server, photos, expected):
    answer = httpx.post(f'{server}/predict', params={'name': 'cat.jpg'}, content=photos['chelsea.jpg'], timeout=60)
    [result] = answer.json()['results']
    assert answer.status_code == 200 and result['file'] == 'cat.jpg' and result['label'] == expected['chelsea.jpg'].label


def test_bad_files_get_error_entries_beside_good_ones(server, photos):
    bad = bad_files(photos)
    files = [('photo', ('cat.jpg', photos['chelsea.jpg']))] + [('photo', (n, c)) for n, c in bad.items()]
    answer = httpx.post(f'{server}/predict', files=files, timeout=60)
    assert answer.status_code == 200
    results = {r['file']: r for r in answer.json()['results']}
    assert results['cat.jpg']['error'] is None
    for name in bad: assert results[name]['error'] and results[name]['label'] is None, name
    assert 'text file' in results['notes.txt']['error'] and 'web page' in results['page.jpg']['error']
    assert 'empty' in results['empty.jpg']['error']


def test_a_photo_over_the_photo_limit_is_an_error_entry(server, photos):
    big = b'\xff\xd8' + b'\0' * (20 * 1024**2)        # over the app's 20 MB per photo, under the 30 MB request cap
    answer = httpx.post(f'{server}/predict', files=[('photo', ('big.jpg', big)), ('photo', ('cat.jpg', photos['chelsea.jpg']))],
                        timeout=60)
    assert answer.status_code == 200
    big_entry, cat = answer.json()['results']
    assert big_entry['error'] == 'This file is over the 20 MB limit.' and cat['error'] is None


def test_huge_body_is_refused_with_json(server):
    answer = httpx.post(f'{server}/predict', content=b'x' * (40 * 1024**2), timeout=60)
    assert answer.status_code == 413 and 'limit' in answer.json()['error']
    # no Content-Length (chunked): cut off while it arrives
    chunks = (b'x' * 1024**2 for _ in range(40))
    answer = httpx.post(f'{server}/predict', content=chunks, timeout=60)
    assert answer.status_code == 413 and 'limit' in answer.json()['error']
    # and the server still answers afterwards
    assert httpx.get(f'{server}/health').status_code == 200


def test_empty_and_malformed_requests_are_400(server):
    assert httpx.post(f'{server}/predict', content=b'').status_code == 400
    answer = httpx.post(f'{server}/predict', content=b'--xx\r\nnot a form',
                        headers={'content-type': 'multipart/form-data; boundary=xx'})
    assert answer.status_code == 400 and answer.json()['error']
    assert httpx.get(f'{server}/predict').status_code == 405


def test_fifty_concurrent_clients(server, photos, expected):
    names = list(photos)

    async def one(client, i):
        name = names[i % len(names)]
        r = await client.post(f'{server}/predict', files=[('photo', (name, photos[name]))])
        return name, r.status_code, r.json()

    async def all_at_once():
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=50)) as client:
            return await asyncio.gather(*(one(client, i) for i in range(50)))

    answers = asyncio.run(all_at_once())
    assert [status for _, status, _ in answers] == [200] * 50
    for name, _, body in answers: assert body['results'][0]['label'] == expected[name].label
    assert httpx.get(f'{server}/health').json()['pending'] == 0


def test_per_source_groups_pdf_pages():
    from types import SimpleNamespace as P
    flat = [P(page=None), P(page=1, pages=3), P(page=2, pages=3), P(page=3, pages=3), P(page=None)]
    assert [len(g) for g in per_source(flat, 3)] == [1, 3, 1]
    with pytest.raises(ValueError): per_source(flat, 2)


def test_busy_server_answers_503(photos):
    "A full queue refuses at once with JSON, instead of piling up requests (in-process app)."
    from starlette.testclient import TestClient
    from pictaxon.api import create_app, PhotoService
    service = PhotoService(MODEL, max_pending=0)
    answer = TestClient(create_app(service)).post('/predict', content=photos['chelsea.jpg'])
    assert answer.status_code == 503 and answer.headers['retry-after'] and 'busy' in answer.json()['error']


def test_too_many_files_are_refused_with_json(server):
    from pictaxon.api import MAX_FILES
    files = [('photo', (f'{i}.jpg', b'tiny')) for i in range(MAX_FILES + 1)]
    answer = httpx.post(f'{server}/predict', files=files, timeout=60)
    assert answer.status_code == 413 and f'limit is {MAX_FILES}' in answer.json()['error']
