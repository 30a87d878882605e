"""`python -m reprotrain promote`: explicit, audited moves of `champion` and rollbacks, against a
real SQLite store in tmp_path (versions created with MlflowClient: promotion needs no model
files)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from reprotrain import tracking
from reprotrain.commands import promote
from reprotrain.errors import ConfigError
from reprotrain.tracking import registry
from tests.conftest import project_client, run, subprocess_env

NAME = "tiny-classifier"


@pytest.fixture
def registry_project(store_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project (params.yaml with tracking.store) whose store holds three versions."""
    root = store_project
    text = (root / "params.yaml").read_text().replace("store: mlruns", "store: registry-store")
    (root / "params.yaml").write_text(text)
    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-gitconfig"))
    client = _client(root)
    client.create_registered_model(NAME)
    for _ in range(3):
        client.create_model_version(NAME, source=(root / "nowhere").as_uri())
    return root


def _client(root: Path):
    return project_client(root, "registry-store")


def champion(root: Path) -> str:
    return str(_client(root).get_model_version_by_alias(NAME, "champion").version)


@pytest.mark.slow
def test_promote_and_rollback_are_audited(
    registry_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = registry_project
    assert promote.main([NAME, "1", "--reason", "first model"]) == 0
    assert promote.main([NAME, "3", "--reason", "better on the new photos"]) == 0
    assert "champion promoted v1 → v3 by alice" in capsys.readouterr().out
    assert champion(root) == "3"
    client = _client(root)
    v3 = client.get_model_version(NAME, "3").tags
    assert v3["reprotrain.promoted_by"] == "alice"
    assert v3["reprotrain.previous_champion"] == "1"
    assert v3["reprotrain.promotion_reason"] == "explicit promotion: better on the new photos"
    assert v3["reprotrain.promoted_at"].endswith("Z")  # UTC

    assert promote.main([NAME, "--rollback", "--reason", "wrong on night photos"]) == 0
    assert "rolled back v3 → v1" in capsys.readouterr().out
    assert champion(root) == "1"
    v3 = client.get_model_version(NAME, "3").tags
    assert v3["reprotrain.rolled_back_by"] == "alice"
    assert v3["reprotrain.rollback_reason"] == "wrong on night photos"
    history = client.get_registered_model(NAME).tags["reprotrain.promotions"].splitlines()
    assert len(history) == 3
    assert "champion v3 → v1 (rollback) by alice: wrong on night photos" in history[0]
    assert "champion none → v1 by alice" in history[2]
    # v1 was the first champion: nothing earlier to roll back to.
    with pytest.raises(tracking.TrackingError, match="records no previous champion"):
        promote.main([NAME, "--rollback"])
    assert champion(root) == "1"


@pytest.mark.slow
def test_promote_errors_are_one_line(registry_project: Path) -> None:
    with pytest.raises(tracking.TrackingError, match="has no champion"):
        promote.main([NAME, "--rollback"])
    with pytest.raises(tracking.TrackingError, match="v9 not found"):
        promote.main([NAME, "9"])
    with pytest.raises(ConfigError, match="either a VERSION"):
        promote.main([NAME, "2", "--rollback"])
    promote.main([NAME, "2"])
    with pytest.raises(tracking.TrackingError, match="already the champion"):
        promote.main([NAME, "2"])


@pytest.mark.slow
def test_promote_command_line(registry_project: Path) -> None:
    """The real `python -m reprotrain promote` (user from git config, one-line errors)."""
    root = registry_project
    env = subprocess_env(GIT_CONFIG_GLOBAL=str(root / "gitconfig"))
    run(["git", "config", "--global", "user.name", "Bea Keeper"], root, env)
    run(["git", "config", "--global", "user.email", "bea@example.org"], root, env)
    cmd = [sys.executable, "-m", "reprotrain", "promote"]
    out = run([*cmd, NAME, "2", "--reason", "A/B test won"], root, env).stdout
    assert "champion promoted none → v2 by Bea Keeper <bea@example.org> (A/B test won)" in out
    assert _client(root).get_model_version(NAME, "2").tags["reprotrain.promoted_by"] == (
        "Bea Keeper <bea@example.org>"
    )
    bad = run([*cmd, NAME, "--rollback"], root, env, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "error: " in bad.stderr and "records no previous champion" in bad.stderr


@pytest.mark.slow
def test_expect_champion_is_a_compare_and_set(registry_project: Path) -> None:
    """`--expect-champion` (what the merge job passes): refused, with nothing moved, unless
    the champion is still the one the decision was made against."""
    root = registry_project
    promote.main([NAME, "1"])
    client = _client(root)
    with pytest.raises(registry.ChampionMoved) as refused:
        promote.main([NAME, "3", "--expect-champion", "2", "--reason", "merged"])
    assert str(refused.value).startswith(
        f"{NAME}: champion is v1, but the promotion of v3 was decided against v2: champion "
        "not moved"
    )
    assert "\n" not in str(refused.value)
    with pytest.raises(registry.ChampionMoved, match="decided against no champion"):
        promote.main([NAME, "3", "--expect-champion", "none"])
    assert champion(root) == "1"
    assert "reprotrain.promoted_by" not in client.get_model_version(NAME, "3").tags
    promote.main([NAME, "3", "--expect-champion", "1", "--reason", "merged"])
    assert champion(root) == "3"
    assert client.get_model_version(NAME, "3").tags["reprotrain.previous_champion"] == "1"
    with pytest.raises(SystemExit):  # argparse: one usage line, exit 2
        promote.main([NAME, "2", "--expect-champion", "latest"])
