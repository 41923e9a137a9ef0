"""The simplest possible Redis "worker", the floor of ``compare.py``'s round-trip figure.

Issue 4's round-trip bar is absolute (p50 <= 0.5 ms for ``delay().get()``) and this host's
speed varies several-fold between days. The harness times ``LPUSH`` + ``BRPOP`` round trips
through this relay, in the same run as the real workers: what the host allows any queue
that passes through Redis once each way, with no message format, acks or result backend.

    python _redis_relay.py <url> <req-key> <reply-key>

Loops ``BRPOP <req-key>`` then ``LPUSH <reply-key> <value>``; exits on the value
:data:`STOP`, or when its parent (the harness) has died.
"""

from __future__ import annotations

import os
import sys

import redis

#: The request that ends the relay (it is not answered).
STOP = b"stop"
#: Seconds a BRPOP waits before the relay checks that its parent is still there.
POLL = 1


def relay(url: str, req_key: str, reply_key: str) -> None:
    parent = os.getppid()
    client = redis.Redis.from_url(url)
    try:
        while True:
            item = client.brpop([req_key], timeout=POLL)
            if item is None:
                if os.getppid() != parent:  # reparented: the harness is gone
                    return
                continue
            value = item[1]
            if value == STOP:
                return
            client.lpush(reply_key, value)
    finally:
        client.close()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python _redis_relay.py <url> <req-key> <reply-key>", file=sys.stderr)
        return 2
    relay(*argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
