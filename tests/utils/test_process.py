"""detkit.utils.process: the tools' start-up settings, and that a tool makes them before torch."""

import subprocess
import sys

from detkit.utils import process
from tests.helpers import ROOT


def test_quiet_idle_threads_keeps_the_users_choice(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    process.quiet_idle_threads()
    assert process.os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    process.quiet_idle_threads()
    assert process.os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_keep_freed_memory_on_glibc():
    import platform

    ok = process.keep_freed_memory()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert ok is True
    else:
        assert ok in (True, False)


def test_tools_set_the_thread_policy_before_torch_is_imported():
    """Each tool module, imported as a script would be, sets OMP_WAIT_POLICY while torch is not yet
    loaded (later it would have no effect)."""
    code = (
        "import importlib.util, os, sys\n"
        "os.environ.pop('OMP_WAIT_POLICY', None)\n"
        "spec = importlib.util.spec_from_file_location('tool', sys.argv[1])\n"
        "seen = []\n"
        "class Finder:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' and not seen:\n"
        "            seen.append(os.environ.get('OMP_WAIT_POLICY'))\n"
        "sys.meta_path.insert(0, Finder())\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(seen)\n"
    )
    for tool in ("train", "test", "video", "benchmark"):
        out = subprocess.run(
            [sys.executable, "-c", code, str(ROOT / "tools" / f"{tool}.py")],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
        # torch not imported at all while loading the module, or imported after the setting
        assert out.strip() in ("[]", "['PASSIVE']"), (tool, out)
