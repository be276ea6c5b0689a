"""Model configs: remote downloads (good, corrupt, interrupted), service forwarding, bad configs, checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai
import pytest

from moltbot.engine.config import ModelConfig
from moltbot.engine.sources import ModelSourceError, fetch_remote
from tests.runtime.http_fixtures import ArchiveServer, make_model_archive


@pytest.fixture(scope="module")
def archive(defaults_dir, tmp_path_factory):
    return make_model_archive(defaults_dir / "tiny-chat", tmp_path_factory.mktemp("arch") / "tiny.tar.gz")


def remote_config(url: str, sha256: str, name: str = "remote-chat") -> ModelConfig:
    return ModelConfig.from_dict({"name": name, "type": "remote", "url": url, "sha256": sha256, "allow_http": True})


def test_remote_download_verifies_and_unpacks_once(archive, tmp_path):
    with ArchiveServer(archive) as remote:
        folder = fetch_remote(remote_config(remote.url, remote.sha256), tmp_path)
        assert (folder / "model.onnx").exists() and (folder / "tokenizer.json").exists()
        fetch_remote(remote_config(remote.url, remote.sha256), tmp_path)
        assert len(remote.requests) == 1  # already there: not fetched again
    assert not list((tmp_path / ".downloads").iterdir())


def test_wrong_checksum_leaves_nothing_behind(archive, tmp_path):
    with ArchiveServer(archive) as remote:
        with pytest.raises(ModelSourceError, match="sha256 mismatch"):
            fetch_remote(remote_config(remote.url, "0" * 64), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".downloads"]
    assert not list((tmp_path / ".downloads").iterdir())


def test_interrupted_transfer_says_so_and_the_next_pull_resumes(archive, tmp_path):
    size = archive.stat().st_size
    with ArchiveServer(archive, cut_after=size // 2) as remote:
        with pytest.raises(ModelSourceError, match="interrupted|download failed"):
            fetch_remote(remote_config(remote.url, remote.sha256), tmp_path)
        assert not (tmp_path / "remote-chat").exists()  # no half-made model folder
        folder = fetch_remote(remote_config(remote.url, remote.sha256), tmp_path)
        assert remote.requests[1]["range"] == f"bytes={size // 2}-"
    assert (folder / "model.onnx").exists()


def test_models_pull_cli_shows_progress_and_errors(archive, tmp_path):
    config = tmp_path / "remote.json"
    with ArchiveServer(archive) as remote:
        config.write_text(json.dumps({"name": "pulled", "type": "remote", "url": remote.url, "sha256": remote.sha256,
                                      "allow_http": True}))
        done = subprocess.run([sys.executable, "-m", "moltbot", "models", "pull", str(config),
                               "--models-dir", str(tmp_path / "models")], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "pulled [" in done.stderr and "MB" in done.stderr
        assert (tmp_path / "models" / "pulled" / "model.onnx").exists()
        config.write_text(json.dumps({"name": "bad", "type": "remote", "url": remote.url, "sha256": "1" * 64,
                                      "allow_http": True}))
        failed = subprocess.run([sys.executable, "-m", "moltbot", "models", "pull", str(config),
                                 "--models-dir", str(tmp_path / "models")], capture_output=True, text=True)
    assert failed.returncode == 1 and "sha256 mismatch" in failed.stderr


def test_bad_configs_are_reported_and_do_not_stop_the_others(server_factory, tmp_path, defaults_dir):
    models = tmp_path / "srv" / "models"
    models.mkdir(parents=True)
    (models / "good.json").write_text(json.dumps({"name": "my-chat", "type": "local",
                                                  "path": str(defaults_dir / "tiny-chat"), "max_tokens": 512,
                                                  "temperature": 0.2}))
    (models / "broken.json").write_text("{not json")
    (models / "missing.json").write_text(json.dumps({"name": "ghost", "type": "local", "path": "/nonexistent"}))
    (models / "typo.json").write_text(json.dumps({"name": "x", "type": "locl", "path": "/x"}))
    srv = server_factory("srv")
    ready = httpx.get(srv.url + "/ready").json()
    assert ready["models"] == ["my-chat"]
    errors = " ".join(f["error"] for f in ready["failed"])
    assert "not valid JSON" in errors and "/nonexistent" in errors and "'locl'" in errors
    card = httpx.get(srv.url + "/v1/models/my-chat").json()
    assert card["context_length"] == 512
    metrics = httpx.get(srv.url + "/metrics").text
    assert 'moltbot_model_load_failures_total{model="ghost"} 1.0' in metrics


def test_service_model_forwards_to_another_instance(server_factory, tmp_path):
    upstream = server_factory("upstream", env={"MOLTBOT_API_KEYS": "upstream-key"})
    home = tmp_path / "front"
    (home / "models").mkdir(parents=True)
    (home / "models" / "svc.json").write_text(json.dumps({
        "name": "remote-tiny", "type": "service", "base_url": upstream.url + "/v1", "model": "tiny-chat",
        "api_key_env": "UPSTREAM_KEY"}))
    (home / "models" / "svc-embed.json").write_text(json.dumps({
        "name": "remote-embed", "type": "service", "task": "embeddings", "base_url": upstream.url + "/v1",
        "model": "all-minilm-l6-v2", "api_key_env": "UPSTREAM_KEY"}))
    front = server_factory("front", env={"UPSTREAM_KEY": "upstream-key"})
    with openai.OpenAI(base_url=front.url + "/v1", api_key="x", max_retries=0) as oai:
        reply = oai.chat.completions.create(model="remote-tiny", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
        assert reply.model == "remote-tiny" and reply.usage.completion_tokens == 4
        direct = httpx.post(upstream.url + "/v1/chat/completions", headers={"x-api-key": "upstream-key"},
                            json={"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}],
                                  "max_tokens": 4, "temperature": 0, "ignore_eos": True}).json()
        assert reply.choices[0].message.content == direct["choices"][0]["message"]["content"]
        chunks = list(oai.chat.completions.create(model="remote-tiny", stream=True, max_tokens=4, temperature=0,
                                                  messages=[{"role": "user", "content": "hi"}],
                                                  extra_body={"ignore_eos": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct["choices"][0]["message"]["content"]
        assert {c.model for c in chunks} == {"remote-tiny"}  # the served name, streamed or not
        vectors = oai.embeddings.create(model="remote-embed", input=["a", "b"]).data
        assert len(vectors) == 2 and len(vectors[0].embedding) == 384
        with pytest.raises(openai.BadRequestError) as err:  # the upstream's 400 passes through as it came
            oai.chat.completions.create(model="remote-tiny", messages=[{"role": "user", "content": "hi"}],
                                        max_tokens=10**6)
        assert err.value.body["param"] == "max_tokens"


def test_a_pytorch_checkpoint_is_exported_once_and_cached(server_factory, tmp_path):
    from tests.fixture_models import build_tiny_chat_checkpoint

    checkpoint = build_tiny_chat_checkpoint(tmp_path / "hf-checkpoint")
    home = tmp_path / "srv"
    (home / "models").mkdir(parents=True)
    (home / "models" / "hf.json").write_text(json.dumps({"name": "hf-chat", "type": "local",
                                                         "path": str(checkpoint)}))
    srv = server_factory("srv")
    exports = list((home / "cache" / "exports").iterdir())
    assert len(exports) == 1 and (exports[0] / "model.onnx").exists()
    reply = httpx.post(srv.url + "/v1/chat/completions", json={
        "model": "hf-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).json()
    assert reply["usage"]["completion_tokens"] >= 1


def _evil_archives(folder):
    import io
    import tarfile
    import zipfile

    tar_path = folder / "evil.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        data = b"owned"
        info = tarfile.TarInfo("../outside.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    link_path = folder / "link.tar.gz"
    with tarfile.open(link_path, "w:gz") as tf:
        info = tarfile.TarInfo("model/escape")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    zip_path = folder / "evil.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("../outside.txt", "owned")
    return [tar_path, link_path, zip_path]


def test_archives_cannot_write_outside_the_model_folder(tmp_path):
    models = tmp_path / "models"
    for archive in _evil_archives(tmp_path):
        with ArchiveServer(archive) as remote:
            with pytest.raises(ModelSourceError):
                fetch_remote(remote_config(remote.url, remote.sha256, name=archive.stem.replace(".", "-")), models)
    assert not (tmp_path / "outside.txt").exists()
    assert [p.name for p in models.iterdir()] == [".downloads"]
