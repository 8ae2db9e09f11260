"""A stand-in for AssemblyAI's streaming service (`/v3/ws`), behind streamtoken's proxy route.

Speaks the messages the SDK parses (assemblyai/streaming/v3/models.py): `Begin` on connect, a
`Turn` once audio bytes arrive, `Termination` (then close 1000) on the client's
`{"type":"Terminate"}`. It knows nothing of tokens. Each session's request is appended to
--record as one JSON line: path, query, whether a `token` or an `Authorization` header reached
it (never their values), and the X-Streamtoken-* identity headers.

Listens on 127.0.0.1 only, on a free port written to --port-file; stops after --lifetime seconds.
"""
import argparse
import asyncio
import json
import os
import time
import uuid
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import serve


def begin_event():
    now = int(time.time())
    return {"type": "Begin", "id": str(uuid.uuid4()), "expires_at": now + 600}


def turn_event(order, heard_bytes):
    # 16 kHz 16-bit mono: 32 bytes a millisecond.
    end_ms = heard_bytes // 32
    return {
        "type": "Turn",
        "turn_order": order,
        "turn_is_formatted": True,
        "end_of_turn": True,
        "transcript": "Silence.",
        "end_of_turn_confidence": 0.99,
        "words": [
            {"start": 0, "end": end_ms, "confidence": 0.99, "text": "Silence.", "word_is_final": True}
        ],
    }


def termination_event(heard_bytes, started):
    return {
        "type": "Termination",
        "audio_duration_seconds": heard_bytes // 32000,
        "session_duration_seconds": int(time.monotonic() - started),
    }


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--lifetime", type=float, default=300.0)
    args = parser.parse_args()

    def record(entry):
        with open(args.record, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")

    async def session(ws):
        request = ws.request
        url = urlsplit(request.path)
        headers = request.headers
        record(
            {
                "event": "open",
                "path": url.path,
                "query": parse_qs(url.query),
                "token_in_query": "token" in parse_qs(url.query),
                "authorization_header": "authorization" in headers,
                "identity": {
                    name.lower(): value
                    for name, value in headers.raw_items()
                    if name.lower().startswith("x-streamtoken-") and name.lower() != "x-streamtoken-jti"
                },
            }
        )
        if url.path != "/v3/ws":
            await ws.close(4004, "unknown path")
            return
        started = time.monotonic()
        heard = 0
        turns = 0
        await ws.send(json.dumps(begin_event()))
        async for message in ws:
            if isinstance(message, bytes):
                heard += len(message)
                if turns == 0 and heard >= 3200:
                    await ws.send(json.dumps(turn_event(turns, heard)))
                    turns += 1
                continue
            kind = json.loads(message).get("type")
            record({"event": "message", "type": kind})
            if kind == "Terminate":
                await ws.send(json.dumps(termination_event(heard, started)))
                await ws.close(1000)
                break
        record({"event": "closed", "heard_bytes": heard, "turns": turns})

    async with serve(session, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        with open(args.port_file + ".tmp", "w", encoding="utf-8") as out:
            out.write(f"{port}\n")
        os.replace(args.port_file + ".tmp", args.port_file)
        await asyncio.sleep(args.lifetime)


if __name__ == "__main__":
    asyncio.run(main())
