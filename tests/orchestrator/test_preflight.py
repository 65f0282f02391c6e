"""Driver-side checks that read the filesystem: a hub model's revision is pinned to a commit."""

import pytest

from workers.config import ModelSpec

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache on disk in the hub's own layout: refs/main names a commit whose
    snapshot holds the model's files (offline, as in every test)."""
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--acme--tiny-lm"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "snapshots" / COMMIT / "config.json").write_text('{"model_type": "gpt_neox"}')
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return repo


def test_a_hub_revision_is_pinned_to_its_commit(hub_cache):
    """Keyed '@main', a hub model's reference log-probs went stale silently when main moved;
    the driver now pins the revision to the commit every trial loads."""
    from orchestrator.preflight import check_model

    assert check_model(ModelSpec(name="acme/tiny-lm")).revision == COMMIT
    assert check_model(ModelSpec(name="acme/tiny-lm", revision=COMMIT)).revision == COMMIT
    assert check_model(ModelSpec(name="embedded")).revision is None


def test_the_reference_key_names_the_commit(hub_cache, tmp_path):
    from orchestrator.preflight import check_model
    from workers.model import weights_identity

    assert weights_identity(check_model(ModelSpec(name="acme/tiny-lm")), str(tmp_path)) == f"hub:acme/tiny-lm@{COMMIT}"
