"""rediss:// with a password: TLS and authentication work, the password never shows."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import TIMEOUT, Recorder
from tidings import Channel, Hub, Settings

PASSWORD = "tls-pass-" + uuid.uuid4().hex


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; CI must have it")
        pytest.skip(f"{tool} is not installed")
    return path


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A private redis-server speaking only TLS, with a password; yields its rediss:// URL."""
    openssl = _need("openssl")
    server = _need("redis-server")
    ca_key, ca_crt = tmp_path / "ca.key", tmp_path / "ca.crt"
    key, csr, crt = tmp_path / "server.key", tmp_path / "server.csr", tmp_path / "server.crt"
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=tidings-test-ca",
        "-keyout", str(ca_key), "-out", str(ca_crt))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", str(crt))  # fmt: skip
    port = _free_port()
    command = [server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--tls-cert-file", str(crt), "--tls-key-file", str(key),
               "--tls-ca-cert-file", str(ca_crt), "--tls-auth-clients", "no", "--requirepass", PASSWORD,
               "--dir", str(tmp_path)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("the TLS redis-server did not start")
                time.sleep(0.05)
        yield f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca_crt}"
    finally:
        process.terminate()
        process.wait(TIMEOUT)


def test_rediss_with_a_password_carries_messages(tls_redis: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tidings")
    settings = Settings(CHANNEL_BROKER_URL=tls_redis, CHANNEL_NAMESPACE=f"tls-{uuid.uuid4().hex}")
    assert PASSWORD not in repr(settings)
    recorder = Recorder()
    with Hub(settings) as hub:
        Channel("secure.*", recorder, hub=hub)
        for n in range(100):
            Channel("secure.chat", hub=hub).send({"n": n})
        assert hub.join(TIMEOUT)
        assert recorder.values() == list(range(100))
        stats = hub.stats()
        assert stats["broker_connected"] is True
        assert PASSWORD not in repr(stats)
    assert all(PASSWORD not in record.getMessage() for record in caplog.records)


def test_a_wrong_password_is_reported_without_showing_it(tls_redis: str, caplog: pytest.LogCaptureFixture) -> None:
    wrong = tls_redis.replace(PASSWORD, "not-the-password-" + uuid.uuid4().hex)
    caplog.set_level(logging.DEBUG, logger="tidings")
    settings = Settings(CHANNEL_BROKER_URL=wrong, CHANNEL_NAMESPACE=f"tls-{uuid.uuid4().hex}")
    recorder = Recorder()
    hub = Hub(settings).start()
    try:
        Channel("tidings.channels.disconnected", recorder, hub=hub)
        deadline = time.monotonic() + TIMEOUT
        while not any("connection" in record.getMessage() for record in caplog.records):
            assert time.monotonic() < deadline, "no log line about the failing connection"
            time.sleep(0.05)
        assert hub.stats()["broker_connected"] is False
    finally:
        hub.stop(timeout=1)
    secret = wrong.split(":")[2].split("@")[0]
    for record in caplog.records:
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        assert secret not in text, text
