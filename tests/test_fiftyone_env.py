"""FiftyOne's environment as cirlab sets it (no FiftyOne needed): tracking off and loopback forced, state
under the chosen home, a user's own directory settings kept."""
from __future__ import annotations

import os

import pytest

from cirlab.integrations.fiftyone import env

KEYS = list(env.fiftyone_environ(env.fiftyone_home()))


@pytest.fixture()
def clean_env(monkeypatch):
    for key in KEYS + ["FIFTYONE_DATABASE_URI"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(env, "_SET", {})
    return monkeypatch


def test_configure_forces_tracking_off_and_follows_home(clean_env, tmp_path):
    clean_env.setenv("FIFTYONE_DO_NOT_TRACK", "false")
    clean_env.setenv("FIFTYONE_DEFAULT_APP_ADDRESS", "0.0.0.0")
    clean_env.setenv("FIFTYONE_PLUGINS_DIR", str(tmp_path / "mine"))
    env.configure(tmp_path / "a")
    assert os.environ["FIFTYONE_DO_NOT_TRACK"] == "true"
    assert os.environ["FIFTYONE_DEFAULT_APP_ADDRESS"] == "127.0.0.1"
    assert os.environ["FIFTYONE_DATABASE_DIR"] == str(tmp_path / "a" / "db")
    assert os.environ["FIFTYONE_CONFIG_PATH"] == str(tmp_path / "a" / "config.json")
    assert "cirlab" in os.environ["FIFTYONE_BRAIN_SIMILARITY_BACKENDS"].split(",")
    assert os.environ["FIFTYONE_BRAIN_SIMILARITY_CIRLAB_CONFIG_CLS"].endswith("CirlabSimilarityConfig")
    # a second home (the commands' --home after the import-time defaults) replaces what cirlab set ...
    env.configure(tmp_path / "b")
    assert os.environ["FIFTYONE_DATABASE_DIR"] == str(tmp_path / "b" / "db")
    # ... but never the user's own settings
    assert os.environ["FIFTYONE_PLUGINS_DIR"] == str(tmp_path / "mine")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written until used


def test_no_mongod_is_a_clear_error(clean_env, tmp_path):
    clean_env.setenv("CIRLAB_MONGOD", str(tmp_path / "missing-mongod"))
    from cirlab.errors import CirlabError

    with pytest.raises(CirlabError, match="missing-mongod: cannot run"):
        env.check_mongod()
