"""Llama.from_pretrained against a Hugging Face cache laid out in tmp_path (refs, snapshots,
blobs) with HF_HUB_OFFLINE=1: glob patterns, subfolders, local_dir, errors. Nothing is ever
downloaded: the one download path tested runs against fakes."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest
from ferrollm import Llama, demo_model_path
from ferrollm.checkpoints import hub

pytest.importorskip("huggingface_hub")

REPO = "acme/demo-GGUF"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_cache(root, files: dict[str, str | None]) -> str:
    """A cache holding REPO at COMMIT (refs/main): path in the repo -> blob source (None: a
    link to a missing blob, as an interrupted download leaves)."""
    repo = root / ("models--" + REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "blobs").mkdir()
    for i, (name, source) in enumerate(files.items()):
        blob = repo / "blobs" / f"{i:064x}"
        if source is not None:
            blob.symlink_to(source)
        link = repo / "snapshots" / COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return str(root)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = fake_cache(
        tmp_path / "hub",
        {
            "demo-q8_0.gguf": demo_model_path(),
            "sub/demo-q4_0.gguf": demo_model_path(),
            "README.md": __file__,
            "partial-q2_k.gguf": None,
        },
    )
    monkeypatch.setenv("HF_HUB_CACHE", root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def test_glob_resolves_in_the_cache(cache):
    llm = Llama.from_pretrained(REPO, "*q8_0.gguf", n_ctx=64, verbose=False)
    assert llm.model_path.endswith(f"snapshots/{COMMIT}/demo-q8_0.gguf")
    assert llm.n_ctx() == 64
    assert llm("def f(x):", max_tokens=4, temperature=0)["choices"][0]["text"]


def test_subfolder_and_exact_names(cache):
    assert hub.resolve(REPO, "sub/demo-q4_0.gguf").endswith("sub/demo-q4_0.gguf")
    assert hub.resolve(REPO, "*q4_0*").endswith("sub/demo-q4_0.gguf")
    assert hub.resolve(REPO, "demo-q8_0.gguf", additional_files=["README.md"]).endswith("demo-q8_0.gguf")


def test_explicit_cache_dir(cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE")
    assert hub.resolve(REPO, "demo-q8_0.gguf", cache_dir=cache).startswith(cache)


def test_errors_name_the_problem(cache, tmp_path):
    with pytest.raises(ValueError, match="Multiple files found in acme/demo-GGUF matching"):
        hub.resolve(REPO, "*.gguf")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE.*demo-q8_0.gguf"):
        hub.resolve(REPO, "*Q5_K_M.gguf")
    with pytest.raises(FileNotFoundError, match="partial"):  # its blob is missing: not local
        hub.resolve(REPO, "partial-q2_k.gguf")
    with pytest.raises(FileNotFoundError, match="local files: none"):
        hub.resolve("acme/absent", "*.gguf")
    with pytest.raises(FileNotFoundError, match="no-such-extra"):
        hub.resolve(REPO, "demo-q8_0.gguf", additional_files=["no-such-extra"])
    with pytest.raises(ValueError):
        hub.resolve("not a repo id!", "*.gguf")
    with pytest.raises(ValueError, match="filename"):
        Llama.from_pretrained(REPO, None)


def test_local_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    local = tmp_path / "models"
    (local / ".cache").mkdir(parents=True)
    (local / ".cache" / "demo-q8_0.gguf.metadata").write_text("")  # huggingface_hub's bookkeeping
    (local / "demo-q8_0.gguf").symlink_to(demo_model_path())
    assert hub.resolve(REPO, "*.gguf", local_dir=local) == str(local / "demo-q8_0.gguf")


def test_missing_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match="pip install huggingface_hub"):
        Llama.from_pretrained(REPO, "*.gguf")


def test_download_when_not_local_and_online(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    calls = []

    class FakeApi:
        def list_repo_files(self, repo_id, revision=None):
            return ["README.md", "x/model-Q4_K_M.gguf", "model-Q8_0.gguf"]

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return demo_model_path()

    real = hub._hub()
    fakes = SimpleNamespace(**{**vars(real), "HfApi": FakeApi, "hf_hub_download": fake_download})
    monkeypatch.setattr(hub, "_hub", lambda: fakes)
    assert hub.resolve(REPO, "*Q4_K_M.gguf") == demo_model_path()
    assert calls == [(REPO, "x/model-Q4_K_M.gguf")]
    with pytest.raises(ValueError, match="No file found"):
        hub.resolve(REPO, "*IQ2_XS.gguf")
