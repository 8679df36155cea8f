#!/usr/bin/env python3
"""Reference WebSocket echo server for checking the Autobahn harness.

Echoes every text message back as text and every binary message back as
binary. Built on the `websockets` package (installed into .venv3 by
setup.sh). It stands in for switchboard's own echo binary so that the
harness (run.sh, summarize.py) can be exercised end to end.

    tests/autobahn/.venv3/bin/python tests/autobahn/echo_server.py --port 9001 \
        --pidfile /tmp/echo_server.pid &

Loopback only by default. Stops on SIGINT/SIGTERM.
"""

import argparse
import asyncio
import logging
import os
import signal
import sys

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed


async def echo(ws):
    try:
        async for message in ws:  # str for text frames, bytes for binary
            await ws.send(message)
    except ConnectionClosed:
        pass


async def main(host, port, pidfile=None):
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(
            sig, lambda: stop.done() or stop.set_result(None))
    async with serve(
        echo,
        host,
        port,
        max_size=None,        # Autobahn sends messages up to 16 MiB (cases 9.*)
        max_queue=None,
        compression=None,     # no permessage-deflate (cases 12/13 are excluded)
        ping_interval=None,   # unsolicited pings would show up in case results
        close_timeout=5,
    ):
        if pidfile:
            with open(pidfile, "w") as f:
                f.write("%d\n" % os.getpid())
        print("echo_server: listening on ws://%s:%d (pid %d)" % (host, port, os.getpid()),
              flush=True)
        await stop
    print("echo_server: stopped", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--pidfile", metavar="FILE",
                        help="write this process's PID here once listening "
                             "(so a script can stop exactly this server)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log websockets' connection errors")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL,
        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(main(args.host, args.port, args.pidfile))
    except OSError as exc:
        print("echo_server: %s" % exc, file=sys.stderr)
        sys.exit(1)
