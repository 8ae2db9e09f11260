#!/usr/bin/env python3
"""Sends N requests one after another over one keep-alive connection and checks each answers
200. Used by benches/callgrind.sh: the server's instruction count per request is what is read,
so the client only has to be deterministic, not fast.

callgrind_client.py HOST:PORT N METHOD PATH [--key KEY | --raw-key KEY] [--body JSON] [--tokens FILE]
With --tokens, each request's body is {"token": "<line i>"}."""
import socket
import sys


def main():
    address, count, method, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    args = sys.argv[5:]
    options = dict(zip(args[::2], args[1::2]))
    host, port = address.rsplit(":", 1)
    tokens = None
    if "--tokens" in options:
        with open(options["--tokens"]) as f:
            tokens = [line.strip() for line in f if line.strip()]
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")
    for i in range(count):
        body = options.get("--body")
        if tokens is not None:
            body = '{"token":"%s"}' % tokens[i]
        lines = [f"{method} {path} HTTP/1.1", f"Host: {address}"]
        if "--key" in options:
            lines.append(f"Authorization: Bearer {options['--key']}")
        if "--raw-key" in options:
            lines.append(f"Authorization: {options['--raw-key']}")
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        request = "\r\n".join(lines) + "\r\n\r\n" + (body or "")
        sock.sendall(request.encode())
        status = reader.readline()
        if b" 200 " not in status:
            sys.exit(f"request {i}: {status!r}")
        length = 0
        while True:
            line = reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        reader.read(length)
    sock.close()


main()
