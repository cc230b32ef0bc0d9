"""Both fakes keep HTTP/1.1 connections alive, as Replicate and Hugging Face do.

A fake that closed every connection would make each call pay a TCP connect and a new server thread: the
benchmarks would measure the fake, not the client. Reusing a connection is only safe if every request's
body is consumed, even when the fake answers without reading it; these tests hold both properties.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
import replicate
from huggingface_hub import InferenceClient, constants

from fakes import FakeReplicate, default_catalogue
from fakes.hf_server import FakeHF

TOKEN = "r8_test"
SCHNELL = "black-forest-labs/flux-schnell"


@pytest.fixture
def server() -> Iterator[FakeReplicate]:
    with FakeReplicate(prediction_seconds=0.0, token=TOKEN, output_mode="url") as fake:
        default_catalogue(fake)
        yield fake
    assert fake.errors == []


def _exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` on one new connection and read until the server closes it or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        sock.settimeout(1.0)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


def test_the_replicate_sdk_reuses_one_connection_for_creates_and_downloads(server: FakeReplicate) -> None:
    client = replicate.Client(api_token=TOKEN, base_url=server.base_url)
    for i in range(4):
        prediction = client.models.predictions.create(model=SCHNELL, input={"prompt": f"p{i}"}, wait=10)
        assert prediction.status == "succeeded"
        response = httpx.get(server.files_url_for(prediction.output[0]))  # the delivery URL, as a download
        assert response.status_code == 200 and "connection" not in response.headers
    # the SDK's four creates on one connection, the four one-shot downloads on one each
    assert server.connections_accepted == 1 + 4


def test_an_unread_request_body_does_not_leak_into_the_next_request(server: FakeReplicate) -> None:
    body = b'{"input": {"prompt": "never read"}}' + b" " * 5000
    unauthorised = (
        f"POST /v1/models/{SCHNELL}/predictions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    account = f"GET /v1/account HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    answer = _exchange(server.port, unauthorised + account)
    assert answer.count(b"HTTP/1.1 ") == 2, answer[:400]
    assert answer.startswith(b"HTTP/1.1 401 ")
    second = answer[answer.index(b"HTTP/1.1 ", 10) :]
    assert second.startswith(b"HTTP/1.1 200 ") and b'"username"' in second
    assert server.count("GET", "/v1/account") == 1


def test_a_client_that_asks_to_close_gets_its_connection_closed(server: FakeReplicate) -> None:
    request = f"GET /v1/account HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    answer = _exchange(server.port, request.encode() * 2)  # the second request must not be answered
    assert answer.count(b"HTTP/1.1 200 ") == 1
    assert b"\r\nConnection: close\r\n" in answer


def test_http_1_0_clients_are_answered_once_and_closed(server: FakeReplicate) -> None:
    answer = _exchange(server.port, f"GET /v1/account HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    assert answer.count(b" 200 ") == 1 and answer.endswith(b"}")


def test_stop_closes_idle_kept_alive_connections() -> None:
    fake = FakeReplicate(token=TOKEN).start()
    sock = socket.create_connection(("127.0.0.1", fake.port), timeout=5)
    try:
        sock.sendall(f"GET /v1/account HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        fake.stop()
        sock.settimeout(5)
        assert sock.recv(65536) == b""  # closed by the server, not left waiting for its idle timeout
    finally:
        sock.close()


def test_the_hugging_face_client_reuses_its_connection(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with FakeHF(token="hf_test") as fake:
        fake.add_model("org/chat", task="conversational", compute_seconds=0.25)
        client = InferenceClient(model=fake.model_url("org/chat"), token="hf_test")
        for i in range(3):
            reply = client.chat_completion([{"role": "user", "content": f"hello {i}"}], max_tokens=8)
            assert reply.choices[0].message.content
        assert fake.connections_accepted == 1


def test_expect_100_continue_is_answered_once_before_the_body(server: FakeReplicate) -> None:
    body = b'{"input": {"prompt": "a fox"}}'
    head = (
        f"POST /v1/models/{SCHNELL}/predictions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Expect: 100-continue\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"  # before any body was sent
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 201 ")
