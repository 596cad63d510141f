"""A worker on any host runs the flows from its own checkout, not the deploying host's path."""

from pathlib import Path

import pytest
import yaml

from app.deploy_steps import PROJECT_DIR_VARIABLE, set_project_directory

PROJECT = Path(__file__).parents[1]


def test_every_deployment_pulls_by_entering_the_workers_checkout():
    spec = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    assert spec["pull"] == [{"app.deploy_steps.set_project_directory": {}}]
    assert [d["name"] for d in spec["deployments"] if "pull" in d] == []  # none overrides it


def test_the_step_enters_the_installed_checkout_or_the_one_named(tmp_path, monkeypatch):
    monkeypatch.delenv(PROJECT_DIR_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    assert set_project_directory() == {"directory": str(PROJECT)}
    assert Path.cwd() == PROJECT

    other = tmp_path / "checkout"
    other.mkdir()
    (other / "prefect.yaml").write_text("name: malaria-cnn\n")
    monkeypatch.setenv(PROJECT_DIR_VARIABLE, str(other))
    assert set_project_directory() == {"directory": str(other)}
    assert Path.cwd() == other


def test_a_directory_that_is_no_checkout_is_named_with_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(PROJECT_DIR_VARIABLE, str(tmp_path))
    monkeypatch.chdir(PROJECT)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*{PROJECT_DIR_VARIABLE}"):
        set_project_directory()
    assert Path.cwd() == PROJECT  # nothing entered
