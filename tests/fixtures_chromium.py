"""Headless Chromium for the report tests: found on PATH, installed from Debian's `chromium` package when
missing and the tests run as root (CI), otherwise the tests that need it are skipped with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def find_chromium() -> str | None:
    """The first Chromium binary on PATH, or None."""
    return next((p for p in map(shutil.which, NAMES) if p), None)


def install_chromium() -> str:
    """apt-get install chromium (needs root and apt-get); returns '' on success, else why it failed."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "not root, so `apt-get install chromium` cannot run"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if res.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {(res.stderr or res.stdout)[-500:]}"
    return ""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a headless-capable Chromium, installing it when missing."""
    exe = find_chromium()
    if exe is None:
        why = install_chromium()
        exe = find_chromium()
        if exe is None:
            pytest.skip(f"Chromium is missing and could not be installed: {why or 'no binary after install'}")
    return exe


def screenshot(exe: str, page: Path, out: Path, size: tuple[int, int] = (1400, 6000)) -> np.ndarray:
    """Render `page` in headless Chromium (fresh user-data dir) and return the screenshot as RGB pixels."""
    from PIL import Image

    profile = out.parent / f"{out.stem}-profile"
    cmd = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
           f"--screenshot={out}", page.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0 and out.exists(), f"chromium failed ({res.returncode}): {res.stderr[-800:]}"
    return np.asarray(Image.open(out).convert("RGB")).astype(np.int16)


def drawn_fraction(pixels: np.ndarray, min_chroma: int = 80) -> float:
    """Share of strongly coloured pixels: plot marks, bars and colour bars (text and table rules are grey)."""
    chroma = pixels.max(axis=2) - pixels.min(axis=2)
    return float((chroma > min_chroma).mean())
