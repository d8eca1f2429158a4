"""One peer of test_redis_broker.py::test_processes_receive_everything_once_in_one_order.

    python tests/redis_peer.py --url URL --namespace NS --peer 0 --peers 3 --count 5000 --out FILE

Subscribes to ``peers.*``, sends itself a warm-up message on
``warmup.<peer>`` and waits for it, waits at a barrier (the Redis counter
``<namespace>:barrier``) until every peer has subscribed, sends ``count``
messages ``{"peer": peer, "n": 0..count-1}`` on ``peers.<peer>``, waits until
it has received ``peers * count`` messages, stops its hub and writes a JSON
report to ``--out``: what it received, in order, and ``hub.stats()``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import redis

from tidings import Channel, Hub, Message, Settings


class Recorder(list[Message]):
    def __call__(self, message: Message) -> None:
        self.append(message)


TIMEOUT = 60.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--peer", type=int, required=True)
    parser.add_argument("--peers", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    expected = args.peers * args.count

    received: list[tuple[int, int]] = []
    done = threading.Condition()

    def on_message(message: Message) -> None:
        with done:
            received.append((message.data["peer"], message.data["n"]))
            if len(received) >= expected:
                done.notify_all()

    hub = Hub(Settings(CHANNEL_BROKER_URL=args.url, CHANNEL_NAMESPACE=args.namespace)).start()
    Channel("peers.*", on_message, hub=hub)
    # A round trip of a message of our own: the writer appends nothing
    # before the reader has placed itself in the stream, so once it is back
    # nothing the other peers send can be skipped (a hub's reader places
    # itself after start() returns; see test_a_hub_sees_what_others_send...).
    warmup = Recorder()
    Channel(f"warmup.{args.peer}", warmup, hub=hub).send({})
    if not (hub.join(TIMEOUT) and warmup):
        print("the warm-up message did not come back", file=sys.stderr)
        return 1

    barrier = f"{args.namespace}:barrier"
    client: Any = redis.Redis.from_url(args.url)
    client.incr(barrier)
    deadline = time.monotonic() + TIMEOUT
    while int(client.get(barrier) or 0) < args.peers:
        if time.monotonic() > deadline:
            print("the other peers did not arrive at the barrier", file=sys.stderr)
            return 1
        time.sleep(0.005)
    client.close()

    channel = Channel(f"peers.{args.peer}", hub=hub)
    for n in range(args.count):
        channel.send({"peer": args.peer, "n": n})

    with done:
        complete = done.wait_for(lambda: len(received) >= expected, TIMEOUT)
    joined = hub.join(TIMEOUT)
    stopped = hub.stop(TIMEOUT)
    with open(args.out, "w") as out:
        json.dump(
            {"received": received, "complete": complete, "joined": joined, "stopped": stopped, "stats": hub.stats()},
            out,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
