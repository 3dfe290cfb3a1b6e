"""Fixtures shared by the whole suite."""
import os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('PICTAXON_SHARED', ROOT.parent / 'shared'))
sys.path.insert(0, str(ROOT / 'tests'))


@pytest.fixture(scope='session')
def bears_dir() -> Path:
    """The 414 real bear photos (black/grizzly/teddy) that live beside the project, never inside it."""
    path = SHARED / 'datasets' / 'bears'
    if not (path / 'grizzly').is_dir():
        pytest.fail(f'The shared bear photos are missing: expected {path}/{{black,grizzly,teddy}}. '
                    'Clone the project next to shared/ or set PICTAXON_SHARED.')
    return path


@pytest.fixture(scope='module')
def one_torch_thread():
    """Torch on one thread for the module: on shared, busy cores OpenMP's spinning threads make it several
    times slower than one thread."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
