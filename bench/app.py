"""Benchmark the app the way a user meets it: `pictaxon app` served by Voila, driven in Debian's chromium.

Measures, in one run (the server optionally inside ../shared/tools/binder-box: 2 GB, one CPU, as on Binder;
the browser stays outside, as a Binder user's browser is on their own machine):
- cold start: from starting the server to the upload button visible in the browser (and to the model loaded);
- file chosen to label shown, for a 12-megapixel phone JPEG and a 200 KB JPEG, next to the time `predict`
  took inside the kernel (from the server log) to show where the rest goes;
- the kernel's memory: private (USS: what the kernel alone holds, what another page would add), resident and
  peak (VmHWM); and whether torch or fastai are loaded in it;
- Clear: 10 uploads of a 13 MB photo then Clear, four times: the kernel's private memory after each Clear;
- 20 page loads in a row (each uploads the 13 MB photo, then its tab closes), then two pages at once: the
  most kernels alive at once, the kernels left behind, the server's peak memory (all its processes), and,
  inside binder-box, the box's peak and its OOM kills.

Targets: cold start under 10 s, label under 1 s for the 12 MP photo, kernel private memory under 200 MB,
no growth across Clear rounds, no OOM kill and no kernel left after the loads.

Usage: .venv/bin/python bench/app.py [--model models/bears.json] [--repeats 5] [--binder-box PATH]
       [--loads 20] [--loads-only] [--json OUT]
"""
from __future__ import annotations
import argparse, io, json, os, re, socket, statistics, subprocess, sys, tempfile, threading, time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED = Path(os.environ.get('PICTAXON_SHARED', ROOT.parent / 'shared'))
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--no-first-run']
TARGETS = {'cold_start_s': 10.0, 'label_12mp_s': 1.0, 'kernel_uss_mb': 200.0}
MB = 1024**2
sys.path.insert(0, str(ROOT / 'tests'))
from app_page import open_page, close_tab      # the tests drive the page the same way


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def make_photos(folder: Path) -> dict:
    """A 12 MP, 13 MB phone-like JPEG (sensor noise) and a ~200 KB JPEG, from scikit-image's cat photo."""
    from skimage import data
    image = Image.fromarray(data.chelsea()).convert('RGB')
    big = image.resize((4000, 3000), Image.BICUBIC)
    noisy = np.asarray(big).astype(np.int16) + np.random.default_rng(0).normal(0, 12, (3000, 4000, 3))
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / 'phone-12mp.jpg', 'JPEG', quality=100)
    for side in range(1400, 400, -100):               # the largest size that stays around 200 KB
        buffer = io.BytesIO(); big.resize((side, side * 3 // 4), Image.LANCZOS).save(buffer, 'JPEG', quality=88)
        if len(buffer.getvalue()) <= 210_000: break
    (folder / 'small-200kb.jpg').write_bytes(buffer.getvalue())
    return {'12mp': folder / 'phone-12mp.jpg', '200kb': folder / 'small-200kb.jpg'}


class AppServer:
    """`pictaxon app` (optionally inside binder-box) with its log, its kernels and a memory sampler."""
    def __init__(self, model: str, work: Path, binder_box: str | None, idle_timeout: int | None = None):
        self.port, self.log_path = free_port(), work / 'server.log'
        command = [str(BIN / 'pictaxon'), 'app', '--model', model, '--port', str(self.port)]
        if idle_timeout is not None: command += ['--idle-timeout', str(idle_timeout)]
        if binder_box: command = [sys.executable, binder_box, '--', *command]
        self.started = time.perf_counter()
        with open(self.log_path, 'w') as log:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, 'OMP_NUM_THREADS': '1',
                                                 'PICTAXON_FEEDBACK': str(work / 'feedback')})
        self.peak_mb, self.most_kernels, self._done = 0.0, 0, threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    @property
    def url(self) -> str: return f'http://127.0.0.1:{self.port}/'

    def processes(self) -> list:
        try: return [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.Error: return []

    def kernels(self) -> list:
        found = []
        for p in self.processes():
            try:
                if 'ipykernel' in ' '.join(p.cmdline()): found.append(p)
            except psutil.Error: pass
        return found

    def _sample(self):
        while not self._done.is_set():
            total = 0
            for p in self.processes():
                try: total += p.memory_info().rss
                except psutil.Error: pass
            self.peak_mb = max(self.peak_mb, total / MB)
            self.most_kernels = max(self.most_kernels, len(self.kernels()))
            time.sleep(0.2)

    def wait_for_kernels(self, count: int, timeout: float = 90) -> int:
        deadline = time.time() + timeout
        while len(self.kernels()) > count and time.time() < deadline: time.sleep(0.2)
        return len(self.kernels())

    def stop(self) -> str:
        self._done.set()
        self.process.terminate()
        try: self.process.wait(30)
        except subprocess.TimeoutExpired: self.process.kill(); self.process.wait()
        return self.log_path.read_text()


def kernel_memory_mb(kernel: psutil.Process) -> dict:
    """A kernel's memory in MB: private (USS), resident, peak resident (VmHWM); and the heavy modules it loaded."""
    info = kernel.memory_full_info()
    status = Path(f'/proc/{kernel.pid}/status').read_text()
    maps = Path(f'/proc/{kernel.pid}/maps').read_text()
    return {'uss': info.uss / MB, 'rss': info.rss / MB,
            'peak': int(re.search(r'VmHWM:\s+(\d+) kB', status).group(1)) / 1024,
            'torch_loaded': 'libtorch' in maps, 'onnxruntime_loaded': 'onnxruntime' in maps}


def upload(page, path: Path, count: int, timeout=120_000) -> float:
    """Choose `path` in the page and wait for the page's `count`-th label; the seconds from chosen to shown."""
    with page.expect_file_chooser() as chooser: page.click('.widget-upload')
    chosen = time.perf_counter()
    chooser.value.set_files(str(path))
    page.wait_for_function("n => document.querySelectorAll('.pictaxon-label').length >= n", arg=count, timeout=timeout)
    return time.perf_counter() - chosen


def clear(page):
    page.click('text=Clear')
    page.wait_for_function("() => document.querySelectorAll('.pictaxon-card').length === 0", timeout=30_000)


def measure_page(browser, server, photos, repeats, figures):
    """Cold start, label times, kernel memory, Clear rounds: one page in a fresh server."""
    while True:
        try: page = open_page(browser, server.url); break
        except Exception:
            if time.perf_counter() - server.started > 120: raise
            time.sleep(0.05)
    figures['cold_start_s'] = time.perf_counter() - server.started
    page.wait_for_selector('.pictaxon-model:has-text("Knows")', timeout=120_000)
    figures['model_ready_s'] = time.perf_counter() - server.started
    (kernel,) = server.kernels()
    figures['kernel_ready'] = kernel_memory_mb(kernel)
    shown = 0
    for name in ('12mp', '200kb'):
        times = []
        for _ in range(repeats):
            shown += 1
            times.append(upload(page, photos[name], shown))
        figures[f'label_{name}_first_s'] = times[0]
        figures[f'label_{name}_s'] = statistics.median(times[1:] or times)
    figures['kernel_after_labels'] = kernel_memory_mb(kernel)
    clear(page)
    rounds = []
    for _ in range(4):                                # 10 uploads of the 13 MB photo, then Clear
        for i in range(10): upload(page, photos['12mp'], i + 1)
        before = kernel_memory_mb(kernel)['uss']
        clear(page)
        time.sleep(0.5)
        rounds.append({'uss_before_clear': before, 'uss_after_clear': kernel_memory_mb(kernel)['uss']})
    figures['clear_rounds'] = rounds
    figures['kernel_end'] = kernel_memory_mb(kernel)
    close_tab(page)


def page_loads(browser, server, photo, loads, figures):
    """`loads` page loads in a row, each uploading `photo` then closing its tab; then two pages at once."""
    done = 0
    for _ in range(loads):
        page = open_page(browser, server.url)
        upload(page, photo, 1)
        close_tab(page)
        done += 1
    figures['loads_done'] = done
    began = time.perf_counter()
    figures['kernels_after_loads'] = server.wait_for_kernels(0)
    figures['last_kernel_gone_s'] = time.perf_counter() - began
    pages = [open_page(browser, server.url) for _ in range(2)]
    for page in pages:
        with page.expect_file_chooser() as chooser: page.click('.widget-upload')
        chooser.value.set_files(str(photo))
    for page in pages:
        page.wait_for_function("() => document.querySelectorAll('.pictaxon-label').length >= 1", timeout=120_000)
    figures['pages_at_once_done'] = len(pages)
    figures['kernels_at_once'] = len(server.kernels())
    for page in pages: close_tab(page)
    began = time.perf_counter()
    figures['kernels_left'] = server.wait_for_kernels(0)
    figures['last_two_kernels_gone_s'] = time.perf_counter() - began
    figures['most_kernels_alive'] = server.most_kernels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default=str(ROOT / 'models' / 'bears.json'))
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--loads', type=int, default=20)
    parser.add_argument('--loads-only', action='store_true', help='only the page loads (what tests/test_app.py runs)')
    default_box = SHARED / 'tools' / 'binder-box'
    parser.add_argument('--binder-box', default=str(default_box) if default_box.exists() and os.geteuid() == 0 else None,
                        help='run the server inside this binder-box (default: ../shared/tools/binder-box when present)')
    parser.add_argument('--idle-timeout', type=int, help="the server's --idle-timeout (default: pictaxon app's)")
    parser.add_argument('--json', default=str(ROOT / 'bench' / 'out' / 'app.json'))
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix='pictaxon-bench-app-'))
    photos = make_photos(work)
    figures = {'model': args.model, 'binder_box': bool(args.binder_box),
               'photo_bytes': {k: p.stat().st_size for k, p in photos.items()}}
    load_before = os.getloadavg()[0]
    with sync_playwright() as playwright:
        # One window whose tabs open and close, as a user's browser: a page closing its own context would take
        # the page's shutdown request with it.
        browser = playwright.chromium.launch(executable_path='/usr/bin/chromium', args=CHROMIUM_ARGS).new_context(
            viewport={'width': 1100, 'height': 900})
        server = AppServer(args.model, work, args.binder_box, args.idle_timeout)
        try:
            if not args.loads_only: measure_page(browser, server, photos, args.repeats, figures)
            else:
                while True:
                    try: close_tab(open_page(browser, server.url)); break
                    except Exception:
                        if time.perf_counter() - server.started > 120: raise
                        time.sleep(0.2)
            page_loads(browser, server, photos['12mp'], args.loads, figures)
        finally:
            figures['server_peak_mb'] = server.peak_mb
            log = server.stop()
            figures['kernels_started'] = log.count('Kernel started')
            browser.browser.close()
    box = re.search(r'binder-box: peak resident (\d+) MB of a (\d+) MB limit on (\d+) CPU; OOM kills (\d+)', log)
    if box: figures['box_peak_mb'], figures['box_limit_mb'], figures['box_cpus'], figures['oom_kills'] = map(int, box.groups())
    figures['load_average'] = (load_before + os.getloadavg()[0]) / 2
    if not args.loads_only:
        # What the kernel itself spent: `predict`, and the whole upload handler (decode, thumbnail, predict, cards).
        predict_s = [float(x) for x in re.findall(r'predict: 1 photo\(s\) in ([\d.]+) s', log)]
        handler_s = [float(x) for x in re.findall(r'1 photo\(s\) shown in ([\d.]+) s', log)]
        n = args.repeats
        for i, name in enumerate(('12mp', '200kb')):
            part = slice(i * n, (i + 1) * n)
            figures[f'kernel_predict_{name}_s'] = statistics.median(predict_s[part][1:] or predict_s[part])
            figures[f'kernel_handler_{name}_s'] = statistics.median(handler_s[part][1:] or handler_s[part])
    report(figures)
    out = Path(args.json); out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, default=str) + '\n')


def report(figures):
    where = (f'server inside binder-box ({figures.get("box_limit_mb", "?")} MB, {figures.get("box_cpus", "?")} CPU)'
             if figures['binder_box'] else 'server on this machine (no binder-box)')
    print(f'pictaxon app benchmark (model {Path(figures["model"]).name}; {where}; photos: '
          + ', '.join(f'{k} = {v / 1e6:.2f} MB' for k, v in figures['photo_bytes'].items()) + ')')
    if 'cold_start_s' in figures:
        print(f'  cold start, server start -> upload button visible : {figures["cold_start_s"]:6.2f} s'
              f'   ratio to the 10 s target {figures["cold_start_s"] / TARGETS["cold_start_s"]:.2f}')
        print(f'  server start -> model loaded (line about the model) : {figures["model_ready_s"]:6.2f} s')
        for name in ('12mp', '200kb'):
            seen, inside = figures[f'label_{name}_s'], figures[f'kernel_predict_{name}_s']
            handler = figures[f'kernel_handler_{name}_s']
            ratio = f'   ratio to the 1 s target {seen / TARGETS["label_12mp_s"]:.2f}' if name == '12mp' else ''
            print(f'  {name:>5}: file chosen -> label shown (median)       : {seen:6.3f} s{ratio}')
            print(f'         first upload in a fresh kernel               : {figures[f"label_{name}_first_s"]:6.3f} s')
            print(f'         inside the kernel: predict {inside:.3f} s, whole handler {handler:.3f} s; '
                  f'upload + render {seen - handler:.3f} s')
        ready, after = figures['kernel_ready'], figures['kernel_after_labels']
        print(f'  kernel private memory (USS), model loaded           : {ready["uss"]:6.0f} MB'
              f'   ratio to the 200 MB target {ready["uss"] / TARGETS["kernel_uss_mb"]:.2f}')
        print(f'         resident {ready["rss"]:.0f} MB; torch loaded: {ready["torch_loaded"]}, '
              f'onnxruntime loaded: {ready["onnxruntime_loaded"]}')
        print(f'  kernel after the label uploads: USS {after["uss"]:.0f} MB, '
              f'peak resident (VmHWM) {after["peak"]:.0f} MB')
        rounds = figures['clear_rounds']
        print('  Clear, 10 x 13 MB uploads then Clear, four rounds (kernel USS before -> after Clear, MB): '
              + ', '.join(f'{r["uss_before_clear"]:.0f} -> {r["uss_after_clear"]:.0f}' for r in rounds))
        print(f'         growth after Clear from round 1 to round 4: '
              f'{rounds[-1]["uss_after_clear"] - rounds[0]["uss_after_clear"]:+.0f} MB; '
              f'kernel peak resident over the run {figures["kernel_end"]["peak"]:.0f} MB')
    print(f'  {figures["loads_done"]} page loads in a row (13 MB photo each, tab closed), then '
          f'{figures["pages_at_once_done"]} pages at once:')
    print(f'         most kernels alive at once {figures["most_kernels_alive"]}; kernels left after the loads '
          f'{figures["kernels_after_loads"]} (after {figures["last_kernel_gone_s"]:.1f} s), after the two pages '
          f'{figures["kernels_left"]} (after {figures["last_two_kernels_gone_s"]:.1f} s)')
    print(f'         server peak memory (all its processes, resident) {figures["server_peak_mb"]:.0f} MB')
    print(f'         kernels started over the run {figures["kernels_started"]}')
    if 'box_peak_mb' in figures:
        print(f'         binder-box: peak {figures["box_peak_mb"]} MB of {figures["box_limit_mb"]} MB, '
              f'OOM kills {figures["oom_kills"]}')
    print(f'  load average during the run: {figures["load_average"]:.1f} on {os.cpu_count()} cores '
          '(measured with other jobs running when above 1)')


if __name__ == '__main__':
    main()
