#!/usr/bin/env python3
"""A TCP proxy in front of an S3 test server that adds a fixed delay per HTTP request.

Used by the bench/ scripts to put a round trip between a client and s3s-fs, and to count the
requests each operation sends, whatever the client's own metrics say.

    latency_proxy.py --listen-port P --upstream 127.0.0.1:Q --delay-ms 10 --stats FILE
                     [--delay-file PATH] [--tls-cert CERT --tls-key KEY]
                     [--slowdown-file PATH] [--trace FILE]

How it works (Python standard library only, asyncio):

- Each client connection gets its own connection to the upstream; bytes are copied both ways
  unchanged (plain HTTP/1.1 to the upstream, optionally TLS towards the client: pgBackRest's S3
  client only speaks HTTPS).
- A request starts when the client sends after having received response bytes, or sends first
  on a new connection (a "turnaround"). HTTP/1.1 clients do not pipeline, so that is one turnaround
  per request; a client that waits for `100 Continue` before a body would count twice (neither
  object_store nor pgBackRest does). At each turnaround the proxy reads the request's header,
  counts it, sleeps the delay once, then forwards: one added round trip per request, as on a link
  with that latency. Bandwidth is not limited, and TCP and TLS handshakes get no extra delay.
- Responses are acknowledged at once (see `quickack`), which removes a 40 ms stall per GET that
  s3s-fs itself causes.
- With --delay-file, the delay is the number of milliseconds that file holds, read again
  whenever it changes (and --delay-ms while it is missing): a script switches the latency
  between measurements without restarting the proxy or the clients behind it.
- While the file given by --slowdown-file exists, every request is answered by the proxy itself
  with `503 SlowDown` (the S3 error XML, as AWS sends when throttling), its body read and
  discarded; nothing reaches the upstream. Requests sent with a chunked body close the
  connection after the answer, since their end is not known without decoding.
- With --trace, each request is also appended to FILE as it arrives (unix time, method,
  target), and again when its answer starts (unix time, `<`, status, milliseconds since the
  request arrived, delay included, method, target): the sequence of an operation's requests,
  to see which ones wait on each other and which the server is slow to answer.
- Counts (requests; per method; per first key segment, the "prefix", e.g. `cluster-3`; PUTs that
  create an object, i.e. not a multipart part; 503s answered) go to --stats as JSON, rewritten
  (temp + rename) at most every 0.5 s when they changed, at once on SIGUSR1, and on exit
  (SIGTERM/SIGINT). Each write carries a sequence number, so a script can send SIGUSR1 and wait
  for a newer one to read counts that include every request sent before the signal.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import ssl
import sys
import time
import urllib.parse

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<RequestId>latency-proxy</RequestId></Error>"
)
# Enough for any S3 request header; a larger one is a client bug, not something to buffer.
MAX_HEADER = 64 * 1024


class Stats:
    """The counts, and their writing to the stats file."""

    def __init__(self, path, trace=None):
        self.path = path
        self.trace = trace
        self.seq = 0
        self.dirty = True
        self.c = {
            "requests": 0,
            "by_method": {},
            "by_prefix": {},
            "object_puts": 0,
            "slowdown_answered": 0,
            "connections": 0,
        }

    def request(self, method, target):
        if self.trace is not None:
            self.trace.write("%.3f %s %s\n" % (time.time(), method, target))
            self.trace.flush()
        c = self.c
        c["requests"] += 1
        c["by_method"][method] = c["by_method"].get(method, 0) + 1
        prefix = key_prefix(target)
        c["by_prefix"][prefix] = c["by_prefix"].get(prefix, 0) + 1
        # A PUT with partNumber uploads one part of a multipart upload; the object is created
        # by the POST that completes it (?uploadId= without a part number), counted here too.
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
        if (method == "PUT" and "partNumber" not in query) or (
            method == "POST" and "uploadId" in query
        ):
            c["object_puts"] += 1
        self.dirty = True

    def answered(self, request, status):
        """Traces the start of the answer to `request` (arrival time, method, target)."""
        if self.trace is not None and request is not None:
            now = time.time()
            t0, method, target = request
            self.trace.write(
                "%.3f < %s %.0fms %s %s\n" % (now, status, (now - t0) * 1000, method, target)
            )
            self.trace.flush()

    def write(self):
        self.seq += 1
        self.dirty = False
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(dict(self.c, seq=self.seq), f, sort_keys=True)
        os.replace(tmp, self.path)

    async def flush_every(self, seconds):
        while True:
            await asyncio.sleep(seconds)
            if self.dirty:
                self.write()


def key_prefix(target):
    """The first segment of the key a path-style request names (/bucket/<prefix>/...), or of
    the `prefix=` of a listing (/bucket?list-type=2&prefix=<prefix>/...); "-" for neither."""
    parts = urllib.parse.urlsplit(target)
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) >= 2:
        return urllib.parse.unquote(segments[1])
    listed = urllib.parse.parse_qs(parts.query).get("prefix", [""])[0]
    return listed.split("/")[0] or "-"


async def read_header(reader, first):
    """Reads until the end of a request header; returns (header bytes, bytes after it)."""
    buf = first
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEADER:
            raise ValueError("request header too large")
        more = await reader.read(65536)
        if not more:
            raise ConnectionError("client closed in the middle of a request header")
        buf += more
    end = buf.index(b"\r\n\r\n") + 4
    return buf[:end], buf[end:]


def parse_header(header):
    """(method, target, {lower-case name: value}) of a request header."""
    lines = header.decode("latin-1").split("\r\n")
    method, target = (lines[0].split(" ") + ["", ""])[:2]
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip().lower()] = value.strip()
    return method, target, fields


def quickack(sock):
    """Acknowledges the upstream's next bytes at once (Linux's TCP_QUICKACK; it wears off, so it
    is set again before each read). s3s-fs does not set TCP_NODELAY: it writes a response's
    header and body separately and, by Nagle's algorithm, holds the body until the header is
    acknowledged, which a receiver's delayed ACK puts off by 40 ms. That stall, once per GET,
    is the test server's, not the link's: a client talking to s3s-fs directly sees it (a
    restore of 1,000 small files took 23 s instead of 2), S3 does not add it."""
    if hasattr(socket, "TCP_QUICKACK"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass


class Connection:
    """One client connection and its upstream connection."""

    def __init__(self, proxy, reader, writer):
        self.proxy = proxy
        self.client_r, self.client_w = reader, writer
        self.up_r = self.up_w = None
        # True at the start and whenever response bytes went to the client since the client
        # last sent: the next client bytes begin a new request.
        self.turnaround = True
        # (arrival time, method, target) of the request waiting for its answer, for --trace.
        self.waiting = None

    async def run(self):
        self.proxy.stats.c["connections"] += 1
        try:
            self.up_r, self.up_w = await asyncio.open_connection(*self.proxy.upstream)
            down = asyncio.ensure_future(self.server_to_client())
            try:
                await self.client_to_server()
            finally:
                down.cancel()
        except (ConnectionError, ValueError, ssl.SSLError, OSError):
            pass
        finally:
            for w in (self.client_w, self.up_w):
                if w is not None:
                    w.close()

    async def client_to_server(self):
        while True:
            data = await self.client_r.read(65536)
            if not data:
                return
            if self.turnaround:
                self.turnaround = False
                header, rest = await read_header(self.client_r, data)
                method, target, fields = parse_header(header)
                self.waiting = (time.time(), method, target)
                self.proxy.stats.request(method, target)
                delay = self.proxy.current_delay()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self.proxy.slowdown():
                    if not await self.answer_slowdown(fields, rest):
                        return
                    continue
                data = header + rest
            self.up_w.write(data)
            await self.up_w.drain()

    async def answer_slowdown(self, fields, rest):
        """Discards the request's body and answers 503 SlowDown; False when the connection
        must close (a chunked body, whose end is not known here)."""
        chunked = "chunked" in fields.get("transfer-encoding", "").lower()
        left = int(fields.get("content-length", "0") or 0) - len(rest)
        while not chunked and left > 0:
            more = await self.client_r.read(min(left, 65536))
            if not more:
                return False
            left -= len(more)
        self.proxy.stats.c["slowdown_answered"] += 1
        self.client_w.write(
            b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
            + b"Content-Length: %d\r\n" % len(SLOWDOWN_BODY)
            + (b"Connection: close\r\n" if chunked else b"")
            + b"\r\n"
            + SLOWDOWN_BODY
        )
        await self.client_w.drain()
        self.turnaround = True
        return not chunked

    async def server_to_client(self):
        up = self.up_w.get_extra_info("socket")
        try:
            while True:
                quickack(up)
                data = await self.up_r.read(65536)
                if not data:
                    break
                if self.waiting is not None:
                    status = data[9:12].decode("latin-1", "replace")
                    self.proxy.stats.answered(self.waiting, status)
                    self.waiting = None
                self.turnaround = True
                self.client_w.write(data)
                await self.client_w.drain()
        except (ConnectionError, OSError):
            pass
        # The upstream closed: close the client too, so it does not send into the void.
        self.client_w.close()


class Proxy:
    def __init__(self, args):
        host, _, port = args.upstream.rpartition(":")
        self.upstream = (host or "127.0.0.1", int(port))
        self.delay = args.delay_ms / 1000.0
        self.delay_file = args.delay_file
        self.delay_seen = None  # (mtime_ns, size) of the delay file last read
        self.file_delay = None
        self.slowdown_file = args.slowdown_file
        trace = open(args.trace, "a") if args.trace else None
        self.stats = Stats(args.stats, trace)

    def current_delay(self):
        """The delay to add now, in seconds: --delay-file's when it exists, else --delay-ms."""
        if self.delay_file is None:
            return self.delay
        try:
            st = os.stat(self.delay_file)
        except OSError:
            return self.delay
        if (st.st_mtime_ns, st.st_size) != self.delay_seen:
            try:
                with open(self.delay_file) as f:
                    self.file_delay = float(f.read().strip() or 0) / 1000.0
                self.delay_seen = (st.st_mtime_ns, st.st_size)
            except (OSError, ValueError):
                return self.delay
        return self.file_delay

    def slowdown(self):
        return self.slowdown_file is not None and os.path.exists(self.slowdown_file)

    async def handle(self, reader, writer):
        await Connection(self, reader, writer).run()


async def main(args):
    proxy = Proxy(args)
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    server = await asyncio.start_server(
        proxy.handle, "127.0.0.1", args.listen_port, ssl=tls, backlog=1024
    )
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, proxy.stats.write)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    proxy.stats.write()
    flusher = asyncio.ensure_future(proxy.stats.flush_every(0.5))
    async with server:
        await stop
    flusher.cancel()
    proxy.stats.write()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--listen-port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="host:port of the S3 server (plain HTTP)")
    p.add_argument("--delay-ms", type=float, default=0.0, help="added once per request")
    p.add_argument("--delay-file", help="a file holding the delay in ms, overriding --delay-ms")
    p.add_argument("--stats", required=True, help="JSON file the counts are written to")
    p.add_argument("--tls-cert", help="PEM certificate: accept TLS from clients")
    p.add_argument("--tls-key", help="PEM key of --tls-cert")
    p.add_argument("--trace", help="append a line per request: unix time, method, target")
    p.add_argument("--slowdown-file", help="while this file exists, answer 503 SlowDown")
    a = p.parse_args()
    if bool(a.tls_cert) != bool(a.tls_key):
        p.error("--tls-cert and --tls-key go together")
    sys.exit(asyncio.run(main(a)))
