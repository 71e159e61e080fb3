"""A small real envelope server (FastAPI + uvicorn on 127.0.0.1) for the client tests.

It speaks the protocol of docs/protocol.md with the simulated TEE and answers
``echo: <last message>``; ``tamper`` makes it misbehave in one chosen way so the
client's detection can be tested against real HTTP.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from teellm.attestation.runtime.simulated import SimulatedRuntime
from teellm.crypto import envelope
from teellm.crypto.hpke import HpkePrivateKey, Kem
from teellm.crypto.receipts import sign_receipt
from teellm.server import document as d

PUBLISHER = "ab" * 32
DIGEST = hashlib.sha256(b"echo model manifest").hexdigest()
MODEL = d.ModelInfo(id="echo-model", version=2, digest=DIGEST, publisher_key_id=PUBLISHER)

POLICY_YAML = f"""
model_id: echo-model
min_model_version: 1
trusted_publishers: ["{PUBLISHER}"]
attestation:
  allowed_tee_types: [simulated]
  allow_simulated: true
"""


class Identity:
    def __init__(self) -> None:
        self.hpke = HpkePrivateKey.generate(Kem.MLKEM768_X25519)
        self.signing = Ed25519PrivateKey.generate()
        self.hpke_public = self.hpke.public_key.raw
        self.signing_public = self.signing.public_key().public_bytes_raw()
        self.key_id = envelope.key_id(self.hpke_public, self.signing_public)


def _frames(wire: bytes) -> list[bytes]:
    out = []
    while wire:
        n = int.from_bytes(wire[:4], "big")
        out.append(wire[: 4 + n])
        wire = wire[4 + n :]
    return out


class EchoServer:
    def __init__(self) -> None:
        self.identity = Identity()
        self.runtime = SimulatedRuntime()
        self.tamper: str | None = None
        self.plain_mode = False
        self.model = MODEL
        self.posts: list[bytes] = []  # every POST body as received (ciphertext)
        self.responses: list[bytes] = []  # every sealed answer as sent
        self.attestations = 0
        self.app = self._build()
        self.url = ""

    def rotate(self) -> None:
        self.identity = Identity()

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/attestation")
        def attestation(nonce: str = "") -> Response:
            self.attestations += 1
            doc = d.build_document(
                runtime=self.runtime,
                identity=self.identity,
                model=self.model,
                memory_protection={"mlock": True},
                serving_config={"engine": "echo"},
                nonce=bytes.fromhex(nonce),
                plain_mode=self.plain_mode,
            )
            return Response(doc.to_json(), media_type="application/json")

        @app.get("/v1/models")
        def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": self.model.id, "object": "model"}]}

        @app.post("/v1/chat/completions")
        @app.post("/v1/completions")
        async def complete(request: Request) -> Response:
            wire = await request.body()
            self.posts.append(wire)
            if request.headers.get("content-type") != envelope.MEDIA_TYPE:
                return JSONResponse({"error": {"message": "encrypted only"}}, status_code=400)
            try:
                opened = envelope.open_request(
                    wire, self.identity.hpke, server_key_id=self.identity.key_id
                )
            except envelope.KeyMismatchError:
                return JSONResponse(
                    {"error": {"message": "key changed", "code": "key_id_mismatch"}},
                    status_code=400,
                    headers={envelope.KEY_ID_HEADER: self.identity.key_id.hex()},
                )
            except envelope.EnvelopeError:
                return JSONResponse({"error": {"message": "bad envelope"}}, status_code=400)
            body = opened.json()
            if opened.path != request.url.path:
                return JSONResponse({"error": {"message": "path"}}, status_code=400)
            if "messages" in body:
                text = "echo: " + str(body["messages"][-1]["content"])
            else:
                text = "echo: " + str(body.get("prompt"))
            if body.get("model") != self.model.id:
                err = json.dumps({"error": {"message": "model not found", "code": "nf"}})
                sealer = opened.sealer(envelope.ResponseContent.JSON)
                return Response(
                    sealer.seal_all(err.encode()), status_code=404, media_type=envelope.MEDIA_TYPE
                )
            if body.get("stream"):
                return self._stream(opened, text, chat="messages" in body)
            return self._whole(opened, text, chat="messages" in body)

        return app

    def _receipt(self, opened: envelope.OpenedRequest, response_hash: bytes) -> bytes:
        if self.tamper == "no_receipt":
            return b""
        if self.tamper == "bad_receipt":
            response_hash = hashlib.sha256(b"something else").digest()
        return sign_receipt(
            self.identity.signing,
            request_hash=opened.body_hash,
            response_hash=response_hash,
            model_digest=bytes.fromhex(self.model.digest),
        ).to_bytes()

    def _whole(self, opened: envelope.OpenedRequest, text: str, chat: bool) -> Response:
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": "stop"}
        out = {
            "id": "cmpl-1",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.model.id,
            "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        data = json.dumps(out).encode()
        if self.tamper == "plain":
            return Response(data, media_type="application/json")
        sealer = opened.sealer(envelope.ResponseContent.JSON)
        wire = sealer.header + sealer.seal(data)
        wire += sealer.finish(self._receipt(opened, sealer.response_hash))
        wire = self._mangle(opened, wire)
        self.responses.append(wire)
        return Response(wire, media_type=envelope.MEDIA_TYPE)

    def _stream(self, opened: envelope.OpenedRequest, text: str, chat: bool) -> Response:
        events = []
        for i, word in enumerate(text.split(" ")):
            piece = word if i == 0 else " " + word
            delta = {"content": piece} if chat else None
            choice = (
                {"index": 0, "delta": delta, "finish_reason": None}
                if chat
                else {"index": 0, "text": piece, "finish_reason": None}
            )
            chunk = {
                "id": "chunk-1",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": 1,
                "model": self.model.id,
                "choices": [choice],
            }
            events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        if self.tamper == "plain":
            return StreamingResponse(iter(events), media_type="text/event-stream")
        sealer = opened.sealer(envelope.ResponseContent.EVENT_STREAM)
        wire = sealer.header + b"".join(sealer.seal(e) for e in events)
        wire += sealer.finish(self._receipt(opened, sealer.response_hash))
        wire = self._mangle(opened, wire)
        self.responses.append(wire)
        header, frames = (
            wire[: envelope.RESPONSE_HEADER_SIZE],
            _frames(wire[envelope.RESPONSE_HEADER_SIZE :]),
        )

        def gen() -> Iterator[bytes]:
            yield header
            yield from frames

        return StreamingResponse(gen(), media_type=envelope.MEDIA_TYPE)

    def _mangle(self, opened: envelope.OpenedRequest, wire: bytes) -> bytes:
        mode = self.tamper
        if mode in (None, "plain", "no_receipt", "bad_receipt"):
            return wire
        header = wire[: envelope.RESPONSE_HEADER_SIZE]
        frames = _frames(wire[envelope.RESPONSE_HEADER_SIZE :])
        if mode == "flip":
            bad = bytearray(frames[0])
            bad[-3] ^= 0x04
            frames[0] = bytes(bad)
        elif mode == "drop":
            del frames[0]
        elif mode == "reorder":
            frames[0], frames[1] = frames[1], frames[0]
        elif mode == "replay":
            frames.insert(1, frames[0])
        elif mode == "truncate":
            frames = frames[:-1]
        elif mode == "foreign":
            # The same request answered twice: a frame of the other answer spliced in.
            alt = opened.sealer(envelope.ResponseContent.EVENT_STREAM)
            frames[0] = alt.seal(b"data: {}\n\n")
        return header + b"".join(frames)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    """A uvicorn server in a thread; stopped by :meth:`stop`."""

    def __init__(self, app: Any) -> None:
        self.port = _free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    running = Running(server.app)
    server.url = running.url
    yield server
    running.stop()


@pytest.fixture
def fresh(echo: EchoServer) -> Iterator[EchoServer]:
    """The module's echo server, reset to honest behaviour around each test."""
    echo.tamper = None
    echo.plain_mode = False
    echo.model = MODEL
    echo.posts.clear()
    echo.responses.clear()
    yield echo
    echo.tamper = None
    echo.model = MODEL
