import pytest

from tests.helpers import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    yield from one_torch_thread()
