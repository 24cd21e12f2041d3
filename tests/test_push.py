"""`multiverse push`: folder checks and the upload call, offline (HfApi's network methods are recorded)."""

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from tiny import tiny_model

from cards import render_dataset_card, render_model_card
from multiverse.push import FolderError, main, push_folder, validate_folder


@pytest.fixture
def calls(monkeypatch):
    """Replace HfApi.create_repo / upload_folder with recorders: no request leaves the machine."""
    recorded = []

    def create_repo(self, repo_id, **kwargs):
        recorded.append(("create_repo", repo_id, kwargs, self.token))

    def upload_folder(self, **kwargs):
        recorded.append(("upload_folder", kwargs["repo_id"], kwargs, self.token))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return recorded


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    model, tokenizer = tiny_model()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    render_model_card(repo_id="someone/tiny-multiverse").save(folder / "README.md")
    return folder


def test_push_model_folder_records_the_upload(model_folder, calls, capsys):
    assert main([str(model_folder), "--repo-id", "someone/tiny-multiverse", "--private", "--token", "hf_x"]) == 0
    (create, upload) = calls
    assert create[:2] == ("create_repo", "someone/tiny-multiverse")
    assert create[2]["repo_type"] == "model" and create[2]["private"] is True and create[2]["exist_ok"] is True
    assert upload[2]["folder_path"] == str(model_folder) and upload[2]["repo_type"] == "model"
    assert create[3] == upload[3] == "hf_x"
    assert "commit/abc" in capsys.readouterr().out


def test_push_dataset_folder(tmp_path, calls):
    (tmp_path / "train.jsonl").write_text(json.dumps({"id": 1, "response": "<Think>x</Think>1"}) + "\n")
    render_dataset_card(repo_id="someone/data", pretty_name="Data", num_examples=1).save(tmp_path / "README.md")
    url = push_folder(tmp_path, "someone/data")
    assert url.endswith("commit/abc")
    assert [c[2]["repo_type"] for c in calls] == ["dataset", "dataset"]
    assert calls[0][2]["private"] is None  # an existing repo keeps its visibility


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "README.md").unlink(), "no README.md"),
        (lambda f: (f / "README.md").write_text("---\nlicense: [unclosed\n---\n# x\n"), "card metadata does not parse"),
        (lambda f: (f / "README.md").write_text("# just a title\n"), "no YAML metadata"),
        (
            lambda f: (f / "README.md").write_text("---\nmodel-index: [{name: x, results: [{}]}]\n---\n"),
            "does not parse",
        ),
        (lambda f: (f / "model.safetensors").unlink(), "no weights"),
        (lambda f: (f / "config.json").write_text("{oops"), "config.json: not valid JSON"),
        (lambda f: (f / "attention.py").unlink(), r"\.py names attention\.py, which is not in the folder"),
    ],
)
def test_broken_model_folders_are_refused_before_any_upload(model_folder, tmp_path, calls, damage, message):
    folder = Path(shutil.copytree(model_folder, tmp_path / "copy"))
    assert validate_folder(folder) == "model"
    damage(folder)
    with pytest.raises(FolderError, match=message):
        push_folder(folder, "someone/tiny-multiverse")
    assert calls == []


def test_unusable_targets_are_refused(tmp_path, calls, capsys):
    with pytest.raises(FolderError, match="neither a model"):
        validate_folder(tmp_path)
    with pytest.raises(FolderError, match="not a folder"):
        validate_folder(tmp_path / "missing")
    from multiverse.cli import main as cli_main

    assert cli_main(["push", str(tmp_path), "--repo-id", "bad id with spaces"]) == 2
    assert "--repo-id" in capsys.readouterr().err
    assert calls == []
