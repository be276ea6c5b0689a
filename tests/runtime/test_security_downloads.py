"""Remote model downloads (issue #16, item 8) and URL redaction in messages and logs (item 4), against real HTTP
servers on 127.0.0.1."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from moltbot.engine.config import ModelConfig, ModelConfigError
from moltbot.engine.sources import MAX_REDIRECTS, ModelSourceError, fetch_remote
from moltbot.logs import JsonFormatter, redact_url, redact_urls
from tests.runtime.http_fixtures import ArchiveServer, make_model_archive


@pytest.fixture
def archive(defaults_dir: Path, tmp_path: Path) -> Path:
    return make_model_archive(defaults_dir / "tiny-chat", tmp_path / "tiny.tar.gz")


def remote(url: str, sha256: str, **extra: Any) -> ModelConfig:
    return ModelConfig.from_dict({"name": "remote-chat", "source": "remote", "url": url, "sha256": sha256, **extra})


class Redirector:
    """Answers every GET with a 302 to `target` (a function of the hop number), counting the hops."""

    def __init__(self, target: Any, streamed_bytes: int = 0) -> None:
        self.hops = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.hops += 1
                if streamed_bytes:  # no Content-Length: the body just keeps coming
                    self.send_response(200)
                    self.end_headers()
                    for _ in range(streamed_bytes // 65536):
                        self.wfile.write(b"\0" * 65536)
                    return
                self.send_response(302)
                self.send_header("Location", target(outer.hops))
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def redirector() -> Iterator[Any]:
    made: list[Redirector] = []

    def make(target: Any, streamed_bytes: int = 0) -> Redirector:
        made.append(Redirector(target, streamed_bytes))
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_plain_http_is_refused_unless_the_config_opts_in(archive, tmp_path):
    with pytest.raises(ModelConfigError, match="plain http://"):
        ModelConfig.from_dict({"name": "m", "source": "remote", "url": "http://example.invalid/m.tar.gz",
                               "sha256": "0" * 64})
    with ArchiveServer(archive) as server:
        folder = fetch_remote(remote(server.url, server.sha256, allow_http=True), tmp_path)
        assert (folder / "model.onnx").exists()


def test_a_download_past_max_download_bytes_stops_and_keeps_nothing(archive, tmp_path):
    size = archive.stat().st_size
    with ArchiveServer(archive) as server:  # Content-Length says it at once
        with pytest.raises(ModelSourceError, match=f"more than the model's max_download_bytes \\({size - 1}\\)"):
            fetch_remote(remote(server.url, server.sha256, allow_http=True, max_download_bytes=size - 1), tmp_path)
        assert len(server.requests) == 1
    assert not list((tmp_path / ".downloads").iterdir()) and not (tmp_path / "remote-chat").exists()


def test_a_body_without_length_is_cut_at_max_download_bytes(redirector, tmp_path):
    endless = redirector(None, streamed_bytes=8 << 20)
    with pytest.raises(ModelSourceError, match="max_download_bytes \\(1000000\\) received"):
        fetch_remote(remote(endless.url + "/m.tar.gz", "0" * 64, allow_http=True, max_download_bytes=1_000_000),
                     tmp_path)
    assert not list((tmp_path / ".downloads").iterdir())


def test_redirects_are_counted(redirector, tmp_path):
    loop = redirector(lambda hop: f"/hop{hop}")
    with pytest.raises(ModelSourceError, match=f"more than {MAX_REDIRECTS} redirects"):
        fetch_remote(remote(loop.url + "/start?token=s3cr3t", "0" * 64, allow_http=True), tmp_path)
    assert loop.hops == MAX_REDIRECTS + 1


REFUSED_HOP = "redirected to .* \\(plain http://\\), which is refused"


@pytest.fixture
def tls(tmp_path, monkeypatch) -> Any:
    """tls(server): serves that (not yet started) http.server over TLS on 127.0.0.1 with a certificate that
    fetch_remote's httpx client is told to trust; returns its https:// base URL."""
    import functools
    import ssl

    import httpx

    from tests.runtime.test_security import make_certificate

    cert, key = make_certificate(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    monkeypatch.setattr(httpx, "Client", functools.partial(
        httpx.Client, verify=ssl.create_default_context(cafile=str(cert))))

    def wrap(server: Any) -> str:
        server.httpd.socket = server_context.wrap_socket(server.httpd.socket, server_side=True)
        return f"https://127.0.0.1:{server.httpd.server_address[1]}"

    return wrap


def test_an_https_url_redirecting_to_plain_http_is_refused_without_the_opt_in(archive, redirector, tls, tmp_path):
    """A real TLS server on 127.0.0.1 redirects to http://: the plain hop is refused before it is requested (its
    URL, often signed, never goes over plain HTTP)."""
    with ArchiveServer(archive) as plain:
        tls_redirect = redirector(lambda _: plain.url)
        https_url = tls(tls_redirect) + "/m.tar.gz"
        with pytest.raises(ModelSourceError, match=REFUSED_HOP):
            fetch_remote(remote(https_url, plain.sha256), tmp_path)
        assert tls_redirect.hops == 1 and plain.requests == []  # refused before it was sent
        folder = fetch_remote(remote(https_url, plain.sha256, allow_http=True), tmp_path)
        assert (folder / "model.onnx").exists() and plain.requests == [{"range": None}]


def test_a_plain_http_hop_between_https_ones_is_refused(archive, redirector, tls, tmp_path):
    """https -> http -> https: the final URL is https, but the hop in between went over plain HTTP."""
    served = ArchiveServer(archive)
    https_archive = tls(served) + "/model.tar.gz"
    with served:
        bounce = redirector(lambda _: https_archive)  # plain http, back to https
        start = redirector(lambda _: bounce.url + "/m.tar.gz?X-Amz-Signature=s3cr3t")
        https_url = tls(start) + "/m.tar.gz"
        with pytest.raises(ModelSourceError, match=REFUSED_HOP) as refused:
            fetch_remote(remote(https_url, served.sha256), tmp_path)
        assert "s3cr3t" not in str(refused.value)
        assert start.hops == 1 and bounce.hops == 0 and served.requests == []
        assert not (tmp_path / "remote-chat").exists()
        folder = fetch_remote(remote(https_url, served.sha256, allow_http=True), tmp_path)  # opted in: followed
        assert (folder / "model.onnx").exists() and bounce.hops == 1 and served.requests == [{"range": None}]


def test_a_plain_http_url_is_refused_before_any_request(archive, tmp_path):
    from moltbot.engine.sources import _download
    with ArchiveServer(archive) as server:
        with pytest.raises(ModelSourceError, match="plain http://"):
            _download(server.url, tmp_path / "x.part", None, 10.0, None, allow_http=False)
        assert not server.requests


def test_errors_name_the_url_without_user_info_or_query(archive, tmp_path):
    with ArchiveServer(archive) as server:
        signed = server.url.replace("http://", "http://user:pa55word@") + "x?X-Amz-Signature=abcdef&token=t0k"
        with pytest.raises(ModelSourceError) as failed:
            fetch_remote(remote(signed, server.sha256, allow_http=True), tmp_path)
    message = str(failed.value)
    assert "HTTP 404" in message and server.url.replace("model.tar.gz", "") in message
    for secret in ("pa55word", "user:", "X-Amz-Signature", "abcdef", "t0k"):
        assert secret not in message


@pytest.mark.parametrize("url, expected", [
    ("https://u:p@s3.example.com/b/m.tar.gz?X-Amz-Signature=1&X-Amz-Credential=2#frag",
     "https://s3.example.com/b/m.tar.gz"),
    ("http://[::1]:8080/m?sig=1", "http://[::1]:8080/m"),
    ("postgresql://reader:secret@db:5432/shop?sslmode=require", "postgresql://db:5432/shop"),
    ("https://example.com/plain", "https://example.com/plain"),
])
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_the_json_log_never_carries_a_url_secret():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("moltbot.test-redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        url = "https://bob:hunter2@bucket.example.com/m.tar.gz?X-Amz-Signature=deadbeef"
        logger.error("model m not loaded: %s: HTTP 403", url, extra={"source": url, "urls": [url]})
        try:
            raise RuntimeError(f"fetching {url} failed")
        except RuntimeError:
            logger.exception("while loading")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "bucket.example.com/m.tar.gz: HTTP 403" in text
    for secret in ("hunter2", "bob:", "X-Amz-Signature", "deadbeef"):
        assert secret not in text
    first = json.loads(text.splitlines()[0])
    assert first["source"] == "https://bucket.example.com/m.tar.gz"
    assert redact_urls("no url here") == "no url here"
