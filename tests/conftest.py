"""Shared fixtures: the offline dataset mirror, and no network access for any test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MIRROR = Path(__file__).resolve().parents[2] / "shared" / "mirror"

# Any HTTP(S) request urllib makes (official dataset URLs included) goes to this proxy, which refuses
# the connection at once: tests never reach the internet, even on a machine that has it.
DEAD_PROXY = "http://127.0.0.1:9"
PROXY_VARS = ("http_proxy", "https_proxy", "ftp_proxy", "all_proxy",
              "HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "ALL_PROXY")


def offline_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default: os.environ) in which every proxy points at a dead loopback port."""
    env = dict(os.environ if base is None else base)
    for var in PROXY_VARS:
        env[var] = DEAD_PROXY
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    return env


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.setenv(var, DEAD_PROXY)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("BNNREPRO_MIRROR", raising=False)  # tests pass mirrors explicitly


def _find_mirror() -> Path | None:
    if DEFAULT_MIRROR.is_dir():
        return DEFAULT_MIRROR
    env = os.environ.get("BNNREPRO_MIRROR")
    if env and Path(env).is_dir():
        return Path(env).resolve()
    return None


MIRROR = _find_mirror()  # resolved at import time, before `_no_network` clears BNNREPRO_MIRROR


@pytest.fixture
def mirror() -> Path:
    """The byte-exact official mirror (../shared/mirror, or BNNREPRO_MIRROR); skips the test if absent."""
    if MIRROR is None:
        pytest.skip(f"no dataset mirror: neither {DEFAULT_MIRROR} nor BNNREPRO_MIRROR exists")
    return MIRROR


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: several times faster than oversubscribing a small, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
