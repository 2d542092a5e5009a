"""AgentKey.save: the private JWK file is mode 0600 whatever was at the path before (a
file of another mode, a symlink, which is replaced and never followed), and it loads
back as the same key (r3 finding 6)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agentiam.sdk import AgentKey


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("alg", ["ES256", "Ed25519"])
def test_save_writes_a_private_file_that_loads_back(tmp_path: Path, alg: str) -> None:
    key = AgentKey.generate(alg)
    path = tmp_path / "agent.key"
    key.save(path)
    assert _mode(path) == 0o600
    assert "d" in json.loads(path.read_text())["jwk"]
    loaded = AgentKey.load(path)
    assert (loaded.alg, loaded.kid) == (key.alg, key.kid)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.key"]  # no temp file left


def test_save_over_a_readable_file_makes_it_private(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    path.write_text("placeholder")
    path.chmod(0o644)
    key = AgentKey.generate()
    key.save(path)
    assert _mode(path) == 0o600
    assert AgentKey.load(path).kid == key.kid


def test_save_replaces_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("not the key")
    target.chmod(0o644)
    link = tmp_path / "agent.key"
    os.symlink(target, link)
    key = AgentKey.generate()
    key.save(link)
    assert not link.is_symlink()
    assert _mode(link) == 0o600
    assert target.read_text() == "not the key"  # nothing written through the link
    assert AgentKey.load(link).kid == key.kid
    dangling = tmp_path / "dangling.key"
    os.symlink(tmp_path / "missing", dangling)
    key.save(dangling)
    assert not (tmp_path / "missing").exists()
    assert not dangling.is_symlink()


def test_a_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    old = AgentKey.generate()
    old.save(path)
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "x").write_text("")
    with pytest.raises(IsADirectoryError):  # a directory is not replaced by a file
        AgentKey.generate().save(tmp_path / "blocked")
    assert AgentKey.load(path).kid == old.kid
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.key", "blocked"]
