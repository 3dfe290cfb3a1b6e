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
        # Anyone's clone has no shared/: these few checks need the real bear photos, everything else runs on
        # photos every install has. In CI shared/ is beside the clone, so they run there.
        pytest.skip(f'not run: needs the real bear photos at {path} (clone next to shared/ or set PICTAXON_SHARED)')
    return path


@pytest.fixture(scope='session')
def houseplants_dir() -> Path:
    """The 600 real houseplant photos (5 classes) beside the project; skipped with one line when absent."""
    path = SHARED / 'datasets' / 'houseplants'
    if not path.is_dir():
        pytest.skip(f'not run: needs the real houseplant photos at {path} (clone next to shared/ or set PICTAXON_SHARED)')
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
