"""https from tls_cert_file and tls_key_file: `meterd serve` answers the anthropic SDK over TLS
with a certificate made here, the dashboard marks its cookies Secure and sends HSTS, the CLI
keeps its plain Unix socket, and bad TLS settings stop the start with a message naming them."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import signal
import ssl
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import anthropic
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meterd.settings import Settings, SettingsError
from meterd.tls import server_context
from tests.conftest import MOCK_KEY, Upstream, free_port

EMBEDDED = pytest.mark.parametrize("redis_url", ["embedded"], indirect=True)


def make_certificate(directory: Path, name: str = "gateway") -> tuple[Path, Path]:
    """A self-signed leaf for localhost and 127.0.0.1, as PEM files (certificate, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def trusting(cert_file: Path) -> ssl.SSLContext:
    """A client context that trusts only this certificate, as a pinning client does."""
    return ssl.create_default_context(cafile=str(cert_file))


@EMBEDDED
async def test_serve_answers_the_sdk_over_https_and_the_cli_over_its_socket(
        tmp_path: Path, upstream: Upstream, redis_url: str) -> None:
    cert_file, key_file = make_certificate(tmp_path)
    port, data = free_port(), tmp_path / "data"
    env = {**os.environ, "MTD_UPSTREAM_URL": upstream.url, "MTD_UPSTREAM_KEY": MOCK_KEY,
           "MTD_LOG_LEVEL": "warning", "MTD_DATA_DIR": str(data),
           "MTD_TLS_CERT_FILE": str(cert_file), "MTD_TLS_KEY_FILE": str(key_file)}

    async def cli(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meterd.cli", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return out.decode()

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterd.cli", "serve", "--port", str(port), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    url = f"https://127.0.0.1:{port}"
    try:
        tls = trusting(cert_file)
        # unsafe: keep the cookies of a host that is an IP address
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            for _ in range(300):
                try:
                    async with s.get(url + "/readyz", ssl=tls) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            # The management commands reach the running server over its plain Unix socket.
            await cli("team", "create", "platform")
            await cli("dev", "create", "Ada", "--email", "ada@example.com", "--team", "platform")
            key = next(w for w in (await cli("key", "issue", "ada@example.com")).split()
                       if w.startswith("mtd_"))
            await asyncio.sleep(0.5)  # the policy reaches the proxy side

            # Plain http to the https port is no answer, and an untrusting client refuses it.
            with pytest.raises(aiohttp.ClientError):
                async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                    await r.read()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with s.get(url + "/readyz") as r:
                    await r.read()

            # The dashboard over TLS: the session cookie is Secure, and HSTS is sent.
            async with s.get(url + "/admin/signin", ssl=tls) as r:
                assert r.status == 200
                assert r.headers["Strict-Transport-Security"] == "max-age=31536000"
                found = re.search(r'name="csrf" value="([^"]+)"', await r.text())
                assert found
            async with s.post(url + "/admin/signin/key", ssl=tls, allow_redirects=False,
                              data={"key": key, "csrf": found.group(1)}) as r:
                assert r.status == 303
                session = r.cookies["meterd_session"]
                assert session["secure"] and session["httponly"]

        async with anthropic.AsyncAnthropic(
                base_url=url, api_key=key, max_retries=0,
                http_client=anthropic.DefaultAsyncHttpxClient(verify=tls)) as sdk:
            message = await sdk.messages.create(
                model="claude-sonnet-4-6", max_tokens=64,
                messages=[{"role": "user", "content": "Hello"}])
        assert message.content[0].type == "text"
        assert message.content[0].text.startswith("Hello from")
        assert "https://127.0.0.1" in (await proc.stdout.readline()).decode()  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]


@pytest.mark.parametrize(("role", "path", "status"), [
    ("proxy", "/healthz", 200), ("admin", "/admin/api/v1/teams", 401)])
async def test_proxy_and_admin_serve_https_too(tmp_path: Path, role: str, path: str,
                                                status: int) -> None:
    cert_file, key_file = make_certificate(tmp_path)
    port = free_port()
    env = {**os.environ, "MTD_DATA_DIR": str(tmp_path / "data"), "MTD_LOG_LEVEL": "warning",
           "MTD_TLS_CERT_FILE": str(cert_file), "MTD_TLS_KEY_FILE": str(key_file),
           "MTD_PROXY_PORT": str(port), "MTD_ADMIN_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meterd.cli", role, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    got = None
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(300):
                try:
                    async with s.get(f"https://127.0.0.1:{port}{path}",
                                     ssl=trusting(cert_file)) as r:
                        got = r.status
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert got == status, err.decode()[-2000:]
    assert proc.returncode == 0, err.decode()[-2000:]


def test_proxy_url_is_https_when_tls_is_set(tmp_path: Path) -> None:
    cert_file, key_file = make_certificate(tmp_path)
    settings = Settings(tls_cert_file=str(cert_file), tls_key_file=str(key_file))
    assert settings.proxy_url == "https://127.0.0.1:4000"
    assert server_context(Settings()) is None
    assert isinstance(server_context(settings), ssl.SSLContext)


def test_tls_files_go_together_are_readable_and_match(tmp_path: Path) -> None:
    cert_file, key_file = make_certificate(tmp_path)
    _, other_key = make_certificate(tmp_path, "other")
    with pytest.raises(SettingsError, match=r"MTD_TLS_CERT_FILE, MTD_TLS_KEY_FILE.*both or "
                                            r"neither"):
        server_context(Settings(tls_cert_file=str(cert_file)))
    with pytest.raises(SettingsError, match="both or neither"):
        server_context(Settings(tls_key_file=str(key_file)))
    with pytest.raises(SettingsError, match=r"setting tls_key_file: cannot read .*missing\.key"):
        server_context(Settings(tls_cert_file=str(cert_file),
                                tls_key_file=str(tmp_path / "missing.key")))
    with pytest.raises(SettingsError, match="do not load"):
        server_context(Settings(tls_cert_file=str(cert_file), tls_key_file=str(other_key)))
    with pytest.raises(SettingsError, match="do not load"):
        server_context(Settings(tls_cert_file=str(key_file), tls_key_file=str(key_file)))


@pytest.mark.parametrize("role", ["serve", "proxy", "admin"])
def test_a_bad_tls_setting_stops_each_role_at_start_with_its_name(
        tmp_path: Path, role: str) -> None:
    cert_file, _ = make_certificate(tmp_path)
    env = {**os.environ, "MTD_DATA_DIR": str(tmp_path / "data"), "MTD_LOG_LEVEL": "warning",
           "MTD_TLS_CERT_FILE": str(cert_file), "MTD_PROXY_PORT": str(free_port()),
           "MTD_ADMIN_PORT": str(free_port())}
    done = subprocess.run([sys.executable, "-m", "meterd.cli", role], env=env,
                          capture_output=True, timeout=60)
    assert done.returncode == 2
    assert b"tls_cert_file and tls_key_file" in done.stderr
    assert b"Traceback" not in done.stderr
