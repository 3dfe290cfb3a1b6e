"""A local web server that plays the internet for gather tests and benchmarks.

It serves real photos and misbehaves on purpose at named paths. Only 127.0.0.1 is used.
"""
from __future__ import annotations
import io, struct, threading, time, zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from PIL import Image


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header declares `width` x `height` pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)
    header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\x00' * 1024)) + chunk(b'IEND', b'')


def reencoded(data: bytes, quality: int = 60, scale: float = 0.9) -> bytes:
    """A near copy of a photo: resized a little and saved at another JPEG quality."""
    image = Image.open(io.BytesIO(data)).convert('RGB')
    image = image.resize((int(image.width * scale), int(image.height * scale)))
    out = io.BytesIO(); image.save(out, 'JPEG', quality=quality)
    return out.getvalue()


def as_webp(data: bytes) -> bytes:
    out = io.BytesIO(); Image.open(io.BytesIO(data)).convert('RGB').save(out, 'WEBP'); return out.getvalue()


class PhotoServer:
    """Serves `photos` (name -> JPEG bytes) at /photo/<name>, plus misbehaving paths.

    /404 /500, /hang.jpg (sleeps `hang_s`), /html.jpg (HTML as image/jpeg), /truncated.jpg, /loop.jpg
    (redirects to itself), /redirect/<name> (one redirect to a photo), /huge.jpg (declares 25 MB),
    /huge-stream.jpg (streams 25 MB with no length), /bomb.png, /empty.jpg, /webp.jpg (the last photo as WEBP bytes),
    /near/<name> (a re-encoded near copy), /trickle.jpg (declares 40 bytes, sends one every `trickle_s`),
    /to-localhost/<name> (redirects to the photo at http://localhost:PORT, another name for this machine).
    `latency` seconds are added to every request; `on_request(path)`, when given, runs before each answer
    (what the rest of the world does meanwhile, e.g. a person cleaning the dataset).
    """

    def __init__(self, photos: dict[str, bytes], latency: float = 0.0, hang_s: float = 3.0, trickle_s: float = 0.3,
                 on_request=None):
        self.photos, self.latency, self.hang_s, self.trickle_s = photos, latency, hang_s, trickle_s
        self.on_request = on_request
        self.requests = 0
        first = next(iter(photos.values()))
        self.special = {
            '/html.jpg': (200, 'image/jpeg', b'<!DOCTYPE html><html><body><h1>Access denied</h1></body></html>'),
            '/truncated.jpg': (200, 'image/jpeg', first[: len(first) // 2]),
            '/bomb.png': (200, 'image/png', bomb_png()),
            '/empty.jpg': (200, 'image/jpeg', b''),
            '/webp.jpg': (200, 'image/jpeg', as_webp(list(photos.values())[-1])),
        }
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'
            # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm meets the
            # client's delayed ACK and every response stalls ~40 ms, which no real web server does.
            disable_nagle_algorithm = True
            def log_message(self, *args): pass

            def send(self, status, kind=None, body=b'', headers=()):
                self.send_response(status)
                for key, value in headers: self.send_header(key, value)
                if kind: self.send_header('Content-Type', kind)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                server.requests += 1
                if server.latency: time.sleep(server.latency)
                path = self.path
                if server.on_request: server.on_request(path)
                try:
                    if path.startswith('/photo/') and path[7:] in server.photos:
                        return self.send(200, 'image/jpeg', server.photos[path[7:]])
                    if path.startswith('/near/') and path[6:] in server.photos:
                        return self.send(200, 'image/jpeg', reencoded(server.photos[path[6:]]))
                    if path.startswith('/redirect/'):
                        return self.send(302, headers=[('Location', '/photo/' + path[10:])])
                    if path.startswith('/to-localhost/'):
                        port = server.httpd.server_address[1]
                        return self.send(302, headers=[('Location', f'http://localhost:{port}/photo/' + path[14:])])
                    if path == '/trickle.jpg':
                        self.send_response(200); self.send_header('Content-Type', 'image/jpeg')
                        self.send_header('Content-Length', '40'); self.end_headers()
                        for _ in range(40):
                            self.wfile.write(b'\xff'); self.wfile.flush(); time.sleep(server.trickle_s)
                        return
                    if path in server.special: return self.send(*server.special[path])
                    if path == '/500': return self.send(500, 'text/plain', b'internal error')
                    if path == '/hang.jpg':
                        time.sleep(server.hang_s); return self.send(200, 'image/jpeg', first)
                    if path == '/loop.jpg': return self.send(302, headers=[('Location', '/loop.jpg')])
                    if path == '/huge.jpg':
                        self.send_response(200); self.send_header('Content-Type', 'image/jpeg')
                        self.send_header('Content-Length', str(25 * 1024**2)); self.end_headers()
                        return self.wfile.write(b'\xff\xd8' + b'\0' * 1024)
                    if path == '/huge-stream.jpg':
                        self.send_response(200); self.send_header('Content-Type', 'image/jpeg')
                        self.send_header('Connection', 'close'); self.end_headers()
                        for _ in range(25 * 16): self.wfile.write(b'\0' * 65536)
                        return
                    return self.send(404, 'text/plain', b'not found')
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def bear_photos(bears_dir: Path, per_class: int | None = None) -> dict[str, bytes]:
    """name -> bytes of the shared bear photos, e.g. 'grizzly-00000001.jpg'."""
    photos = {}
    for folder in sorted(p for p in bears_dir.iterdir() if p.is_dir()):
        for path in sorted(folder.glob('*.jpg'))[:per_class]:
            photos[f'{folder.name}-{path.name}'] = path.read_bytes()
    return photos


def sample_photos(n_per_class: int = 4, side: int = 160, seed: int = 0) -> dict[str, bytes]:
    """'<class>-<i>.jpg' -> JPEG bytes: random crops of scikit-image's sample photos (every install has them),
    classes 'cat', 'coffee', 'rocket', 'astronaut'."""
    import numpy as np
    from skimage import data
    rng, photos = np.random.RandomState(seed), {}
    for name, pixels in [('cat', data.chelsea()), ('coffee', data.coffee()), ('rocket', data.rocket()),
                         ('astronaut', data.astronaut())]:
        h, w = pixels.shape[:2]
        for i in range(n_per_class):
            crop = rng.randint(int(0.5 * min(h, w)), min(h, w))
            y, x = rng.randint(0, h - crop + 1), rng.randint(0, w - crop + 1)
            out = io.BytesIO()
            Image.fromarray(pixels[y:y + crop, x:x + crop]).resize((side, side)).save(out, 'JPEG', quality=90)
            photos[f'{name}-{i}.jpg'] = out.getvalue()
    return photos


if __name__ == '__main__':
    # Serve in a process of its own (benchmarks: the "internet" should not share the client's GIL).
    import argparse, sys
    parser = argparse.ArgumentParser()
    parser.add_argument('bears', type=Path)
    parser.add_argument('--n', type=int, default=300)
    parser.add_argument('--latency', type=float, default=0.0)
    args = parser.parse_args()
    photos = dict(list(bear_photos(args.bears).items())[: args.n])
    with PhotoServer(photos, latency=args.latency) as server:
        print(server.url, flush=True)
        sys.stdin.read()          # serve until the parent closes our stdin
