"""A console version of the Lona clock demo, on tidings' in-process hub.

A ticker thread sends ``clock.tick`` every second. Watchers come and go,
announcing themselves on ``clock.join`` and ``clock.leave``; each watcher has
its own subscription to ``clock.tick``. One display subscribes to ``clock.*``
and prints what happens, live::

    python examples/clock.py --seconds 10
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from datetime import datetime, timedelta

from tidings import Channel, Message, default_hub

_ONE_SECOND = timedelta(seconds=1)


class Display:
    """Subscribed to ``clock.*``: keeps the watcher count and prints each event."""

    def __init__(self) -> None:
        self.watching: set[str] = set()
        self.channel = Channel("clock.*", self.show)

    def show(self, message: Message) -> None:
        data = message.data
        if message.topic == "clock.join":
            self.watching.add(data["name"])
            print(f"  + {data['name']} joined")
        elif message.topic == "clock.leave":
            self.watching.discard(data["name"])
            print(f"  - {data['name']} left")
        elif message.topic == "clock.tick":
            count = len(self.watching)
            people = "person" if count == 1 else "people"
            print(f"{data['time']}  {count} {people} watching")


class Watcher:
    """A viewer of the clock: subscribed to ticks while watching."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ticks_seen = 0
        self.channel = Channel("clock.tick", self.on_tick)
        Channel("clock.join").send({"name": name})

    def on_tick(self, message: Message) -> None:
        self.ticks_seen += 1

    def leave(self) -> None:
        self.channel.unsubscribe()
        Channel("clock.leave").send({"name": self.name, "ticks_seen": self.ticks_seen})


def tick(stop: threading.Event) -> None:
    ticks = Channel("clock.tick")
    while not stop.is_set():
        # expiry: a tick nobody could show within a second is worth nothing.
        ticks.send({"time": datetime.now().strftime("%H:%M:%S")}, expiry=_ONE_SECOND)
        stop.wait(1.0 - time.time() % 1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the watchers' comings and goings")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    print("tidings clock demo: Ctrl-C to stop early")
    display = Display()
    stop = threading.Event()
    ticker = threading.Thread(target=tick, args=(stop,), daemon=True)
    ticker.start()
    watchers: list[Watcher] = []
    names = iter(f"watcher-{n}" for n in range(1, 10_000))
    deadline = time.monotonic() + args.seconds
    try:
        while time.monotonic() < deadline:
            if watchers and rng.random() < 0.4:
                watchers.pop(rng.randrange(len(watchers))).leave()
            else:
                watchers.append(Watcher(next(names)))
            time.sleep(min(rng.uniform(0.3, 1.5), max(0.0, deadline - time.monotonic())))
    except KeyboardInterrupt:
        pass
    stop.set()
    ticker.join()
    for watcher in watchers:
        watcher.leave()
    hub = default_hub()
    hub.join(timeout=5)
    display.channel.unsubscribe()
    stats = hub.stats()
    print(f"done: {stats['sent']} messages sent, {stats['delivered']} deliveries, {stats['handler_errors']} errors")


if __name__ == "__main__":
    main()
