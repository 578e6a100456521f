"""Render an HTML page in headless Chromium, for tests that must know what a browser shows.

:func:`image_status` loads a copy of the page with a small script injected: on ``load`` it
records, for every ``<img>``, whether it decoded (``complete && naturalWidth > 0``) into a
``<pre>`` element, which ``--dump-dom`` then prints. ``--virtual-time-budget`` lets the page
finish loading (and the script run) before the dump. :func:`screenshot` writes a PNG of the page.

Chromium runs with a throw-away profile and without network features (no QUIC, no background
networking, no component updates, no sync), so a test neither depends on nor reaches the network.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

CHECK_ID = "detkit-image-check"
SCRIPT = (
    "<script>window.addEventListener('load', function () {"
    "  var out = [];"
    "  document.querySelectorAll('img').forEach(function (im) {"
    "    out.push({src: (im.getAttribute('src') || '').slice(0, 40), alt: im.alt,"
    "              ok: im.complete && im.naturalWidth > 0, width: im.naturalWidth});"
    "  });"
    "  var pre = document.createElement('pre');"
    f"  pre.id = '{CHECK_ID}';"
    "  pre.textContent = JSON.stringify(out);"
    "  document.body.appendChild(pre);"
    "});</script>"
)


def chromium() -> Optional[str]:
    """The Chromium executable, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: Sequence[str], timeout: float) -> str:
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("chromium is not installed")
    with tempfile.TemporaryDirectory(prefix="detkit-chromium-") as profile:
        cmd = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def image_status(html_path: Path, timeout: float = 120) -> List[dict]:
    """For every ``<img>`` of the page: ``{"src" (first 40 characters), "alt", "ok", "width"}``
    as Chromium saw it after loading. The page is copied beside the original (so relative
    links still resolve) with the check script injected, and the copy removed afterwards."""
    html_path = Path(html_path)
    page = html_path.read_text(encoding="utf-8")
    page = page.replace("</body>", SCRIPT + "</body>", 1) if "</body>" in page else page + SCRIPT
    copy = html_path.with_name(f".browser-check-{html_path.name}")
    copy.write_text(page, encoding="utf-8")
    try:
        dom = _run(["--virtual-time-budget=10000", "--dump-dom", copy.resolve().as_uri()], timeout)
    finally:
        copy.unlink(missing_ok=True)
    match = re.search(rf'<pre id="{CHECK_ID}">(.*?)</pre>', dom, re.S)
    if match is None:
        raise RuntimeError("the image check did not run (no result element in the dumped DOM)")
    text = match.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
    return json.loads(text.replace("&amp;", "&"))


def screenshot(
    html_path: Path, png_path: Path, window_size: Tuple[int, int] = (1280, 900), timeout=120
) -> Path:
    """A PNG of the page's first ``window_size`` pixels (a tall size shows more of the page)."""
    png_path = Path(png_path)
    _run(
        [
            f"--screenshot={png_path.resolve()}",
            f"--window-size={window_size[0]},{window_size[1]}",
            "--hide-scrollbars",
            "--virtual-time-budget=10000",
            Path(html_path).resolve().as_uri(),
        ],
        timeout,
    )
    if not png_path.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {png_path}")
    return png_path
