import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest, and steadiest on a shared machine, on one intra-op thread;
    it also makes in-process results comparable to single-threaded subprocess workers'."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def torch_kernels():
    """A context manager that switches the C extension off (lossgym._native), so that the
    torch kernels (autograd where parameters are tensors) compute what is inside it: the
    reference the compiled kernels are compared with."""
    from contextlib import contextmanager

    from lossgym import _native

    @contextmanager
    def off():
        saved = _native.closedform
        _native.closedform = None
        try:
            yield
        finally:
            _native.closedform = saved

    return off


def load_script(name):
    """The module ``scripts/<name>.py``, imported from its file (scripts/ is not a package;
    it goes on sys.path, since the scripts import each other)."""
    import importlib.util
    import sys
    from pathlib import Path

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    sys.path.insert(0, str(scripts))
    spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
