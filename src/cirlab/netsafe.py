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
    if "address" not in overrides:
        # Ray 2.60 turns a loopback _node_ip_address into the machine's outward address (and its
        # servers bind 0.0.0.0) unless "cluster mode" is off; off, every Ray process binds 127.0.0.1.
        # The variable covers the processes Ray starts, the attribute a driver that imported ray already.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        import sys

        constants = sys.modules.get("ray._private.ray_constants")
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = False
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


def playwright_chromium_kwargs(user_data_dir: str | os.PathLike[str],
                               executable_path: str = "/usr/bin/chromium") -> dict[str, Any]:
    """Keyword arguments for Playwright's ``chromium.launch_persistent_context`` with the flags of
    ``chromium_args`` (Playwright takes the profile directory as an argument, not as a flag) and the
    system Chromium (Playwright never downloads a browser here)."""
    flags = [a for a in chromium_args(user_data_dir) if not a.startswith("--user-data-dir=")]
    return {"user_data_dir": str(user_data_dir), "executable_path": executable_path, "headless": True, "args": flags}
