"""The soak's requests: how each kind is sent to a vLLM OpenAI server and what it must get back.

Three families:
- ``good``: a streamed greedy completion whose text must equal the offline engine's;
- bad ones (``BAD``): each must be answered with a 4xx before any token is generated;
- broken-off ones (``BROKEN``): the client gives up (a cancelled task, or a socket reset after
  the first token); nothing is asked of the answer, only of the server afterwards (it keeps
  serving and frees the request's KV blocks).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

GOOD = "good"
BAD = (
    "malformed_json",  # a body cut off mid-object
    "over_max_model_len",  # a prompt one token longer than the server's max_model_len
    "huge_max_tokens",  # max_tokens far beyond what max_model_len leaves
    "n_greedy",  # n > 1 with greedy sampling (every candidate would be the same)
    "kv_budget_above_server",  # a per-request budget above the server's (refused by any design)
    "kv_unknown_key",  # a misspelled kv_* key
)
BROKEN = ("cancelled", "disconnect")
REQUEST_TIMEOUT_S = 600.0  # a request still open after this is a hang: a failure, not a wait


@dataclass(frozen=True)
class Prompt:
    """A good prompt and the exact request that produces its reference text."""

    token_ids: list[int]
    max_tokens: int


@dataclass
class Outcome:
    index: int
    kind: str
    prompt: int  # index into the prompt list (-1: none)
    ok: bool = False
    status: int = 0
    detail: str = ""
    seconds: float = 0.0


def good_body(model: str, prompt: Prompt) -> dict:
    return {
        "model": model,
        "prompt": prompt.token_ids,
        "max_tokens": prompt.max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
    }


def bad_body(kind: str, model: str, prompt: Prompt, max_model_len: int, budget: int, stream: bool) -> dict:
    """A request that a correct server refuses with a 4xx (``malformed_json`` is sent raw).

    Sent unstreamed unless ``stream``: a streamed request that the engine's input processor
    refuses (vLLM's own checks there, and the plugin's ``kv_*`` checks) is answered 200 and
    then an error event, because the stream has started by the time the engine sees it."""
    body = {**good_body(model, prompt), "stream": stream}
    if kind == "over_max_model_len":
        body["prompt"] = (prompt.token_ids * (max_model_len // len(prompt.token_ids) + 2))[: max_model_len + 1]
    elif kind == "huge_max_tokens":
        body["max_tokens"] = 1 << 40
    elif kind == "n_greedy":
        body["n"] = 2
    elif kind == "kv_budget_above_server":
        body["vllm_xargs"] = {"kv_budget": budget * 64}
    elif kind == "kv_unknown_key":
        body["vllm_xargs"] = {"kv_bugdet": budget}
    elif kind != "malformed_json":
        raise ValueError(f"not a bad kind: {kind}")
    return body


def read_stream_text(lines: list[str]) -> tuple[str, str | None, bool]:
    """(text, error, done) from an SSE completion stream's lines: vLLM reports an error after
    the 200 header as a ``data: {"error": ...}`` event, so the status alone proves nothing."""
    text, error, done = [], None, False
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            done = True
            continue
        chunk = json.loads(payload)
        if "error" in chunk:
            error = json.dumps(chunk["error"])[:300]
        for choice in chunk.get("choices", ()):
            text.append(choice.get("text") or "")
    return "".join(text), error, done


async def send_good(session, url: str, body: dict, expected: str, outcome: Outcome) -> None:
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        outcome.status = resp.status
        raw = await resp.text()
    if outcome.status != 200:
        outcome.detail = f"HTTP {outcome.status}: {raw[:300]}"
        return
    text, error, done = read_stream_text(raw.splitlines())
    if error or not done:
        outcome.detail = f"stream error={error} done={done}"
    elif text != expected:
        outcome.detail = f"text differs from the offline engine's: {text[:80]!r} != {expected[:80]!r}"
    else:
        outcome.ok = True


async def send_bad(session, url: str, kind: str, body: dict, outcome: Outcome) -> None:
    if kind == "malformed_json":
        data = json.dumps(body)[:-7].encode()  # cut off inside the object
        request = session.post(f"{url}/v1/completions", data=data, headers={"Content-Type": "application/json"})
    else:
        request = session.post(f"{url}/v1/completions", json=body)
    async with request as resp:
        outcome.status = resp.status
        raw = await resp.text()
    outcome.ok = 400 <= outcome.status < 500
    if not outcome.ok:
        outcome.detail = f"expected a 4xx, got HTTP {outcome.status}: {raw[:300]}"


async def send_cancelled(session, url: str, body: dict, expected: str, after_s: float, outcome: Outcome) -> None:
    """A streamed good request whose client task is cancelled after ``after_s`` (queued,
    prefilling or decoding); if it finishes first, its text is checked like a good one's."""
    try:
        await asyncio.wait_for(send_good(session, url, body, expected, outcome), after_s)
    except asyncio.TimeoutError:
        outcome.ok, outcome.detail = True, f"cancelled after {after_s:.2f} s"


async def send_disconnect(url: str, body: dict, outcome: Outcome) -> None:
    """A streamed good request over a raw socket, reset (RST, no FIN) once the first token
    arrives: the server learns of it only when it next writes."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    try:
        writer.write(head.encode() + data)
        await writer.drain()
        status_line = (await reader.readline()).decode()
        outcome.status = int(status_line.split()[1]) if status_line.startswith("HTTP/") else 0
        if outcome.status != 200:
            outcome.detail = f"expected 200 before the reset, got {status_line.strip()!r}"
            return
        while line := await reader.readline():
            if line.startswith(b"data:"):
                outcome.ok, outcome.detail = True, "reset after the first token"
                return
        outcome.detail = "stream ended before the first token"
    finally:
        sock = writer.get_extra_info("socket")
        if sock is not None:  # linger 0: close() sends a reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()


async def send(session, url: str, outcome: Outcome, body: dict, expected: str, cancel_after_s: float) -> Outcome:
    """Send one request of ``outcome.kind``; a raised error or a timeout is a failure."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            if outcome.kind == GOOD:
                await send_good(session, url, body, expected, outcome)
            elif outcome.kind == "cancelled":
                await send_cancelled(session, url, body, expected, cancel_after_s, outcome)
            elif outcome.kind == "disconnect":
                await send_disconnect(url, body, outcome)
            else:
                await send_bad(session, url, outcome.kind, body, outcome)
    except Exception as e:  # noqa: BLE001 - any client-side error is this request's failure
        outcome.ok, outcome.detail = False, f"{type(e).__name__}: {e}"[:300]
    outcome.seconds = time.perf_counter() - start
    return outcome
