"""No leaks: ended subscriptions leave nothing behind."""

from __future__ import annotations

import gc
import time
import tracemalloc
import weakref

import pytest

from support import TIMEOUT, HubFactory
from tidings import Channel, Hub, Message, Scope


def test_ended_subscriptions_release_channels_and_handlers(make_hub: HubFactory) -> None:
    hub = make_hub(MAX_CHANNEL_TASK_WORKER_THREADS=2)
    refs: list[weakref.ref[object]] = []
    channels: list[Channel] = []
    scope = Scope(hub=hub)
    for number in range(300):

        def handler(message: Message) -> None:
            pass

        topic = [f"leak.{number}", f"leak.{number}.*", f"*.{number}"][number % 3]
        if number % 4 == 0:
            channel = scope.subscribe(topic, handler)
        else:
            channel = Channel(topic, handler, hub=hub)
            channels.append(channel)
        Channel(f"leak.{number}", hub=hub).send()  # routed, delivered and cached
        Channel(f"leak.{number}.x", hub=hub).send()
        refs += [weakref.ref(handler), weakref.ref(channel)]
    assert hub.join(TIMEOUT)
    for channel in channels:
        channel.unsubscribe()
    scope.close()
    Channel("leak.*", hub=hub).send()  # a wildcard send after the index changed
    assert hub.join(TIMEOUT)
    del channels, channel, handler, scope
    gc.collect()
    alive = [ref() for ref in refs if ref() is not None]
    assert not alive, f"{len(alive)} channels or handlers are still referenced, e.g. {alive[:3]}"
    assert hub.topics() == []
    assert hub.stats()["subscriptions"] == 0


def _cycles(hub: Hub, start: int, stop: int) -> None:
    def handler(message: Message) -> None:
        pass

    for number in range(start, stop):
        # Fresh topics every time, exact and wildcard ones.
        Channel(f"leak.{number}" if number % 2 else f"leak.{number}.*", handler, hub=hub).unsubscribe()
    assert hub.join(TIMEOUT)
    gc.collect()


@pytest.mark.slow
def test_a_million_subscribe_unsubscribe_cycles_leave_memory_flat(hub: Hub) -> None:
    # Measured with tracemalloc after 100,000 and after 1,000,000 cycles.
    # Bounded caches (validated topics, routes) may hold up to a few MB
    # either time; a leak of even one small object per cycle would add
    # tens of MB over the 900,000 cycles in between.
    began = time.perf_counter()
    tracemalloc.start()
    try:
        _cycles(hub, 0, 100_000)
        first_size = tracemalloc.get_traced_memory()[0]
        first = tracemalloc.take_snapshot()
        _cycles(hub, 100_000, 1_000_000)
        second_size = tracemalloc.get_traced_memory()[0]
        second = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    growth = second_size - first_size
    top = "\n".join(str(stat) for stat in second.compare_to(first, "lineno")[:8])
    assert growth < 10 * 2**20, f"memory grew by {growth / 2**20:.1f} MB:\n{top}"
    assert hub.topics() == []
    assert hub.stats()["subscriptions"] == 0
    print(f"1,000,000 cycles in {time.perf_counter() - began:.1f} s; growth {growth / 2**20:+.2f} MB")
