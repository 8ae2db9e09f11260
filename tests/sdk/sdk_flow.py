"""The official AssemblyAI Python SDK, unchanged, against streamtoken over TLS (tests/sdk/run.sh
starts everything and sets SSL_CERT_FILE to the test CA).

1. `StreamingClient.create_temporary_token` (GET https://HOST/v3/token, raw `Authorization: <key>`)
   mints a token; a wrong API key is refused with 401.
2. A `StreamingClient` given only `token=` connects to wss://HOST/v3/ws (the token in a raw
   `Authorization` header), which streamtoken admits and relays to the fake upstream: the SDK
   receives `Begin`, streams silence, receives a `Turn`, and ends with `Terminate` →
   `Termination`.
3. A second client with the same token is refused: the SDK's on_error gets code 4003 and
   streamtoken's message naming reuse (AssemblyAI's own Error frame on /v3/ws), and the upstream
   never sees that connection.
4. The upstream saw the SDK's query (`sample_rate`, `format_turns`) with no `token`, no
   `Authorization` header, and the identity headers (`X-Streamtoken-Org: dev`).
"""
import json
import logging
import os
import re
import threading
import time

import assemblyai
import httpx
from assemblyai.streaming.v3 import (
    BeginEvent,
    StreamingClient,
    StreamingClientOptions,
    StreamingError,
    StreamingEvents,
    StreamingParameters,
    TerminationEvent,
    TurnEvent,
)

HOST = os.environ["STREAMTOKEN_HOST"]  # 127.0.0.1:PORT, as api_host: the SDK adds https:// / wss://
KEY = os.environ["STREAMTOKEN_KEY"]
RECORD = os.environ["UPSTREAM_RECORD"]
WAIT = float(os.environ.get("SDK_TEST_WAIT_SECONDS", "15"))
REUSE = re.compile(r"already (been )?used", re.IGNORECASE)
# 100 ms of 16 kHz 16-bit mono silence, five times.
CHUNK = bytes(3200)
CHUNKS = 5

assert os.environ.get("SSL_CERT_FILE"), "SSL_CERT_FILE must name the test CA"
assert "://" not in HOST, "api_host is host:port; the SDK itself chooses https:// and wss://"


class SdkLog(logging.Handler):
    """What the SDK logs (its own channel for what a connection's close said)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def lines(self, level=logging.WARNING):
        return [f"{r.levelname}: {r.getMessage()}" for r in self.records if r.levelno >= level]


sdk_log = SdkLog()
logging.getLogger("assemblyai").addHandler(sdk_log)
logging.getLogger("assemblyai").setLevel(logging.DEBUG)


def options(**credentials):
    # connect_timeout: a debug build on a busy 2-core machine; no retries, so one connect() is
    # one handshake (a retried handshake would present the token again).
    return StreamingClientOptions(
        api_host=HOST, connect_timeout=10.0, max_connection_retries=0, **credentials
    )


class Session:
    """A StreamingClient with every event it reports collected."""

    def __init__(self, token):
        self.client = StreamingClient(options(token=token))
        self.events = {kind: [] for kind in ("Begin", "Turn", "Termination", "Error")}
        self.arrived = {kind: threading.Event() for kind in self.events}
        for kind in self.events:
            self.client.on(StreamingEvents[kind], self._collector(kind))

    def _collector(self, kind):
        def collect(_client, event):
            self.events[kind].append(event)
            self.arrived[kind].set()

        return collect

    def wait(self, kind):
        """The first event of `kind`, waiting at most WAIT seconds (less once an error came)."""
        deadline = time.monotonic() + WAIT
        while not self.arrived[kind].wait(0.02):
            if time.monotonic() > deadline or (kind != "Error" and self.events["Error"]):
                break
        if not self.arrived[kind].is_set():
            raise AssertionError(
                f"no {kind} (waited at most {WAIT:.0f} s); SDK errors: {[repr(e) for e in self.events['Error']]}; "
                f"SDK log: {sdk_log.lines()}"
            )
        return self.events[kind][0]


def upstream_records(until, deadline):
    """The fake upstream's record, once `until` holds of it (or the deadline passes)."""
    while True:
        with open(RECORD, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        if until(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def mint():
    """1. Minting through the SDK."""
    try:
        StreamingClient(options(api_key="not-a-key")).create_temporary_token(expires_in_seconds=60)
        raise AssertionError("a wrong API key minted a token")
    except httpx.HTTPStatusError as refused:
        assert refused.response.status_code == 401, refused.response.status_code
    minter = StreamingClient(options(api_key=KEY))
    token = minter.create_temporary_token(expires_in_seconds=60, max_session_duration_seconds=600)
    assert isinstance(token, str) and token.count(".") == 2, "not a JWS-shaped token"
    print("sdk: create_temporary_token minted a token over https (and a wrong key got 401)")
    return token


def first_session(first):
    """2. A session with the token: Begin, audio, Turn, Terminate, Termination."""
    first.client.connect(StreamingParameters(sample_rate=16000, format_turns=True))
    begin = first.wait("Begin")
    assert isinstance(begin, BeginEvent) and begin.id, begin
    first.client.stream(CHUNK for _ in range(CHUNKS))
    turn = first.wait("Turn")
    assert isinstance(turn, TurnEvent), turn
    assert turn.end_of_turn and turn.transcript == "Silence." and turn.words[0].word_is_final, turn
    first.client.disconnect(terminate=True)
    termination = first.wait("Termination")
    assert isinstance(termination, TerminationEvent), termination
    assert not first.events["Error"], [repr(e) for e in first.events["Error"]]
    print(
        f"sdk: session over wss: Begin (id {begin.id[:8]}…), Turn {turn.transcript!r}, "
        "Termination; no error"
    )


def reused(second):
    """3. The same token again: refused before the upstream, with an error naming reuse."""
    log_mark = len(sdk_log.records)
    second.client.connect(StreamingParameters(sample_rate=16000))
    error = second.wait("Error")
    second.client.disconnect()
    assert not second.events["Begin"], "a reused token reached the upstream"
    assert isinstance(error, StreamingError), repr(error)
    assert error.code == 4003, f"expected close 4003 (token already used), got {error.code}: {error}"
    said = [f"{r.levelname}: {r.getMessage()}" for r in sdk_log.records[log_mark:]]
    logged = [line for line in said if line.startswith("ERROR: ")]
    assert any(REUSE.search(line) for line in logged), f"the SDK's log does not name reuse: {said}"
    print(f"sdk: the reused token was refused; the SDK logged {logged[0]!r}")
    # On /v3/ws streamtoken sends AssemblyAI's own Error frame, so on_error carries our reason
    # (for a bare close 4003 the SDK would show its own text: "This feature is paid-only…").
    assert REUSE.search(str(error)), f"on_error does not name reuse: {error}"
    print(f"sdk: ... and called on_error with code {error.code}: {str(error)!r}")
    ignored = [line for line in said if "Unsupported event type" in line]
    assert not ignored, f"the SDK skipped streamtoken's error frame: {ignored}"


def upstream_saw():
    """4. What the upstream saw: one session, the SDK's query without token, the identity."""
    records = upstream_records(
        lambda r: any(x["event"] == "closed" for x in r), time.monotonic() + WAIT
    )
    opens = [r for r in records if r["event"] == "open"]
    assert len(opens) == 1, f"the upstream saw {len(opens)} connections: {opens}"
    seen = opens[0]
    assert seen["path"] == "/v3/ws", seen
    assert not seen["token_in_query"], "the token reached the upstream in its query"
    assert not seen["authorization_header"], "an Authorization header reached the upstream"
    assert seen["query"].get("sample_rate") == ["16000"], seen["query"]
    assert seen["query"].get("format_turns") == ["True"], seen["query"]
    assert seen["identity"].get("x-streamtoken-org") == "dev", seen["identity"]
    assert seen["identity"].get("x-streamtoken-token-type") == "realtime", seen["identity"]
    assert {"event": "message", "type": "Terminate"} in records, records
    closed = [r for r in records if r["event"] == "closed"]
    assert closed and closed[0]["heard_bytes"] == len(CHUNK) * CHUNKS, closed
    query = "&".join(f"{k}={v[0]}" for k, v in sorted(seen["query"].items()))
    print(
        f"sdk: the upstream saw one session, /v3/ws?{query} with X-Streamtoken-Org: "
        f"{seen['identity']['x-streamtoken-org']}, no token, no Authorization, "
        f"{closed[0]['heard_bytes']} audio bytes, Terminate"
    )


def main():
    print(f"sdk: assemblyai {assemblyai.__version__}, api_host {HOST}")
    started = time.monotonic()
    token = mint()
    sessions = []
    try:
        sessions.append(Session(token))
        first_session(sessions[-1])
        sessions.append(Session(token))
        reused(sessions[-1])
    finally:
        # The SDK's reader and writer are non-daemon threads: a failed step must not leave them
        # holding the interpreter open. disconnect() is idempotent.
        for session in sessions:
            session.client.disconnect()
    upstream_saw()
    print(f"sdk: OK in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
