"""Loopback-only settings for the tools that reach out to the network by default.

Every test, benchmark and command that starts Ray or Chromium goes through
these helpers, so none of them contacts an address other than 127.0.0.1.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


def ray_init_kwargs(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``ray.init`` that keep a local Ray on loopback, without dashboard
    or usage-stats reporting (the latter probes a cloud metadata address otherwise)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    kw: dict[str, Any] = {"_node_ip_address": LOOPBACK, "include_dashboard": False}
    kw.update(overrides)
    return kw


def chromium_args(user_data_dir: str | os.PathLike[str]) -> list[str]:
    """Command-line flags for headless Chromium that keep it off the network."""
    Path(user_data_dir).mkdir(parents=True, exist_ok=True)
    return [
        f"--user-data-dir={user_data_dir}",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-quic",
        "--no-sandbox",
        "--disable-gpu",
    ]
