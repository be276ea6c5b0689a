"""API keys and TLS on a real server."""

from __future__ import annotations

import datetime
import ssl

import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

KEYS = ("sk-first-0123456789", "sk-second-abcdefghij")


@pytest.fixture
def keyed_server(server_factory, tmp_path):
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# operators' keys\n{KEYS[1]}\n")
    return server_factory(env={"MOLTBOT_API_KEYS": KEYS[0], "MOLTBOT_API_KEYS_FILE": str(keys_file)})


def test_v1_routes_need_a_key(keyed_server):
    with httpx.Client(base_url=keyed_server.url) as c:
        for path in ("/v1/models", "/v1/plugins"):
            response = c.get(path)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {KEYS[0]}"}).status_code == 200
        assert c.get("/v1/models", headers={"x-api-key": KEYS[1]}).status_code == 200  # from the keys file
        assert c.get("/v1/models", headers={"Authorization": KEYS[0]}).status_code == 401  # no Bearer
        for open_path in ("/health", "/ready", "/metrics", "/openapi.json"):
            assert c.get(open_path).status_code == 200, open_path


def test_the_openai_client_authenticates_and_keys_never_reach_the_logs(keyed_server):
    with openai.OpenAI(base_url=keyed_server.url + "/v1", api_key=KEYS[0], max_retries=0) as good:
        assert good.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "x"}],
                                            max_tokens=2).choices
    with openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="sk-bad", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    logged = keyed_server.output() + (keyed_server.home / "logs" / "moltbot.log").read_text()
    assert "/v1/chat/completions" in logged
    for secret in (*KEYS, "sk-bad"):
        assert secret not in logged


def test_metrics_can_be_protected(server_factory):
    srv = server_factory(env={"MOLTBOT_API_KEYS": KEYS[0], "MOLTBOT_METRICS_REQUIRE_KEY": "true"})
    assert httpx.get(srv.url + "/metrics").status_code == 401
    assert httpx.get(srv.url + "/metrics", headers={"x-api-key": KEYS[0]}).status_code == 200
    assert httpx.get(srv.url + "/health").status_code == 200


def make_certificate(folder) -> tuple:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_serves_https_beside_http_from_one_process(server_factory, tmp_path):
    cert, key = make_certificate(tmp_path)
    srv = server_factory(https=True, env={"MOLTBOT_TLS_CERT": str(cert), "MOLTBOT_TLS_KEY": str(key)})
    context = ssl.create_default_context(cafile=str(cert))
    https_url = f"https://127.0.0.1:{srv.https_port}"
    with httpx.Client(verify=context) as c:
        assert c.get(https_url + "/health").json() == {"status": "ok"}
        with openai.OpenAI(base_url=https_url + "/v1", api_key="x", http_client=c, max_retries=0) as oai:
            assert {m.id for m in oai.models.list().data} == {"tiny-chat", "all-minilm-l6-v2"}
    assert httpx.get(srv.url + "/health").status_code == 200
    with pytest.raises(httpx.ConnectError):  # the certificate is checked: an unknown CA is refused
        httpx.get(https_url + "/health")


def test_half_a_tls_setting_is_refused_at_start(server_factory, tmp_path):
    cert, _ = make_certificate(tmp_path)
    srv = server_factory(wait=False, env={"MOLTBOT_TLS_CERT": str(cert)})
    assert srv.process.wait(30) == 2
    assert "tls_cert and tls_key must be set together" in srv.output()
