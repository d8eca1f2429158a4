"""The hub: queues, the subscription index, the worker threads, lifecycle.

Life of a message (see docs/architecture.md for why each step keeps a
guarantee):

1. ``Channel.send`` copies the data, builds a :class:`Message` and appends it
   to the hub's global queue (a ``deque``: one atomic append, never blocks).
   Subscribing and unsubscribing append control items to the same queue, so
   subscription changes and messages are seen in one order.
2. A broker thread (``MessageBroker``) takes items in queue order while
   holding the broker lock, routes each message through the
   :class:`TopicIndex` and appends it to the mailbox of every matching
   subscription, then puts subscriptions that became busy on the ready queue.
3. A task-worker thread (``TaskWorker``) takes a subscription from the ready
   queue, runs its handler on the mailbox's messages in order, and gives the
   subscription back (to the end of the ready queue if more arrived).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import operator
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._exceptions import ConfigurationError, HubClosedError
from ._message import Message, resolve_expiry
from ._settings import Settings, import_class
from ._subscription import JoinToken, Subscription
from ._topics import TopicIndex

if TYPE_CHECKING:
    from ._asyncio import LoopRunner
    from ._inbox import InboxCore
    from ._workers import Worker
    from .brokers._base import Codec

__all__ = ["Hub", "configure", "default_hub"]

logger = logging.getLogger("tidings")

SUBSCRIBE_TOPIC = "tidings.channels.subscribe"
UNSUBSCRIBE_TOPIC = "tidings.channels.unsubscribe"

_NEW, _RUNNING, _STOPPING, _STOPPED = "new", "running", "stopping", "stopped"

# Control items share the global queue with messages: (function, argument).
Control = tuple[Callable[[Any], None], Any]

_time = time.time
_monotonic = time.monotonic

# A send() this long after the previous one routes its own message (see _publish).
QUIET = 0.0001
_hub_numbers = itertools.count(1)
_thread_state = threading.local()


def _check_timeout(timeout: float | None) -> float | None:
    """Validate a timeout argument; clamp it to what threading can wait."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if timeout != timeout or timeout < 0:
        raise ValueError(f"timeout must be a non-negative number of seconds, not {timeout!r}")
    return min(float(timeout), threading.TIMEOUT_MAX)


def _peek(counter: itertools.count[int]) -> int:
    """The number ``next(counter)`` would return, without taking it."""
    return int(repr(counter)[6:-1])


def current_worker() -> Worker | None:
    """The tidings worker running on this thread, if any."""
    worker: Worker | None = getattr(_thread_state, "worker", None)
    return worker


class Hub:
    """The channels engine: queues, subscription index, broker and worker threads.

    A hub accepts subscriptions and messages as soon as it exists; it
    delivers once started. It is a context manager::

        with Hub() as hub:
            Channel("greetings", print, hub=hub)
            Channel("greetings", hub=hub).send({"hello": "world"})
            hub.join()              # wait until it has been handled

    Most applications use the default hub (:func:`default_hub`), which
    starts on first use and is stopped, drained, at interpreter exit. A
    stopped hub cannot be started again.
    """

    def __init__(self, settings: Settings | None = None, *, name: str | None = None) -> None:
        if settings is not None and not isinstance(settings, Settings):
            raise TypeError(f"settings must be a tidings.Settings, not {type(settings).__name__}")
        self.settings = settings if settings is not None else Settings()
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        self.name = name if name is not None else f"hub-{next(_hub_numbers)}"
        self._state = _NEW
        self._state_lock = threading.Lock()
        self._stopped_event = threading.Event()
        self._workers: list[Worker] = []
        self._threads: list[threading.Thread] = []
        self._index: TopicIndex[Subscription] = TopicIndex()
        # With a network broker, send() encodes (and so validates) every
        # message that is not local, in the caller's thread.
        self._codec: Codec | None = None
        self._network: Any = None  # the network broker's connection, shared by its instances
        self._refusing = False  # the network broker's send buffer is full
        if self.settings.CHANNEL_BROKER_URL is not None:
            from .brokers._base import Codec

            self._codec = Codec(self.settings.CHANNEL_MAX_MESSAGE_BYTES, self.settings.CHANNEL_BROKER_SECRET)
        self._subscription_count = 0  # changed under the channels' transition lock
        self._inline = False  # send() may route by itself (set by start(): the default broker only)
        self._last_send = 0.0  # monotonic time of the last send that found the queue empty
        # The asyncio bridge: a LoopRunner per event loop with async
        # handlers, every runner ever made (for stats), and the open inboxes
        # of tidings.subscribe(); all guarded by _runners_lock.
        self._runners_lock = threading.Lock()
        self._runners: dict[Any, LoopRunner] = {}
        self._all_runners: list[LoopRunner] = []
        self._inboxes: set[InboxCore] = set()
        self._reset_runtime()
        _hubs.add(self)

    def _reset_runtime(self) -> None:
        """Queues, locks and counters: everything a forked child rebuilds."""
        self._queue: deque[Message | Control] = deque()
        self._ready: deque[Subscription] = deque()
        self._ready_lock = threading.Lock()
        self._ready_cond = threading.Condition(self._ready_lock)
        # Subscriptions with scheduled=True (queued or being run); guarded
        # by the ready lock. join(), stop() and stats() look only at these.
        self._busy: set[Subscription] = set()
        self._idle_task_workers = 0
        # Re-entrant: a custom broker may call stats() or topics() mid-run().
        self._broker_lock = threading.RLock()
        self._broker_wakeup = threading.Event()
        self._broker_waiting = False
        # next() on itertools.count is atomic: it numbers and counts sends.
        self._seq = itertools.count(1)
        self._token = os.urandom(6).hex()
        self._retired: dict[str, int] = {}
        self._shutdown_drops = 0
        self._alive = True  # False tells worker threads to leave their loop
        self._normal = True  # running, not stopping: the workers' fast path
        # Messages that send() routed itself (see _publish), and their drops.
        self._inline_counters: dict[str, int] = {"dropped_unsubscribed": 0}

    # -- lifecycle ---------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the hub has been started and not yet stopped."""
        return self._state in (_RUNNING, _STOPPING)

    def start(self) -> Hub:
        """Start the broker and task-worker threads. Idempotent while running."""
        from ._workers import MessageBroker, TaskWorker, Worker

        with self._state_lock:
            if self._state in (_RUNNING, _STOPPING):
                return self
            if self._state == _STOPPED:
                raise HubClosedError(self.name)
            settings = self.settings
            broker_class = import_class("CHANNEL_MESSAGE_BROKER_CLASS", settings.broker_class())
            worker_class = import_class("CHANNEL_TASK_WORKER_CLASS", settings.CHANNEL_TASK_WORKER_CLASS)
            for setting, cls, base in (
                ("CHANNEL_MESSAGE_BROKER_CLASS", broker_class, MessageBroker),
                ("CHANNEL_TASK_WORKER_CLASS", worker_class, TaskWorker),
            ):
                if not issubclass(cls, Worker):
                    raise ConfigurationError(setting, cls, f"must be a subclass of tidings.Worker ({base.__name__})")
            workers = self._make_workers(broker_class, worker_class)
            # With the default broker and no network, a send() that finds the
            # queue empty and the broker idle routes its message itself.
            self._inline = broker_class is MessageBroker and self._codec is None
            for worker in workers:
                worker.on_start()
            self._alive = True
            self._normal = True
            self._state = _RUNNING
            try:
                self._start_threads(workers)
            except BaseException:
                # Leave no half-started hub behind: it would accept sends
                # and never deliver them.
                self._alive = False
                self._wake_all()
                for thread in self._threads:
                    if thread.ident is not None:
                        thread.join()
                self._workers, self._threads = [], []
                self._state = _NEW
                raise
        return self

    def _make_workers(self, broker_class: type[Worker], worker_class: type[Worker]) -> list[Worker]:
        settings = self.settings
        plan = [(broker_class, "broker", settings.MAX_CHANNEL_MESSAGE_BROKER_THREADS)]
        plan.append((worker_class, "worker", settings.MAX_CHANNEL_TASK_WORKER_THREADS))
        return [
            cls(self, f"tidings-{self.name}-{role}-{number}") for cls, role, count in plan for number in range(count)
        ]

    def _start_threads(self, workers: list[Worker]) -> None:
        self._workers = workers
        self._threads = [threading.Thread(target=w._main, name=w.name, daemon=True) for w in workers]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None, drain: bool = True) -> bool:
        """Stop the hub; with ``drain`` deliver what is queued first.

        With ``drain=True`` (the default) every queued message that is not
        expired and not droppable is delivered before the threads stop,
        including messages that handlers send while draining; droppable
        messages may be dropped. With ``drain=False`` the handler calls in
        progress finish and everything still queued is dropped. What is
        dropped is counted in :meth:`stats`.

        Returns True when the hub drained and its threads ended within
        ``timeout`` seconds (None: no limit). Afterwards ``send`` and
        ``subscribe`` raise :class:`HubClosedError`. Cannot be called from a
        handler.
        """
        if self._on_own_worker():
            raise RuntimeError("Hub.stop() cannot be called from a handler of the same hub")
        if drain:
            self._check_not_on_handler_loop("stop")
        timeout = _check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state_lock:
            state = self._state
            if state == _NEW:
                self._state = _STOPPED
                self._discard_everything()
                self._stopped_event.set()
                self._wake_inboxes()
                return True
            if state == _STOPPING:
                return self._stopped_event.wait(timeout)
            if state == _STOPPED:
                # An earlier stop() gave up on a thread: wait for it again.
                return self._finish_stop(deadline)
            self._state = _STOPPING
            self._normal = False
        drained = False
        try:
            drained = self._drain(deadline) if drain else True
        finally:
            # Also when the drain is interrupted (Ctrl-C): the hub must not
            # stay "stopping" with nobody to finish the stop.
            self._alive = False
            self._normal = False
            self._wake_all()
            self._state = _STOPPED
            self._wake_inboxes()
            if not drained:
                deadline = time.monotonic() if deadline is None else deadline
        return self._finish_stop(deadline) and drained

    def _finish_stop(self, deadline: float | None) -> bool:
        """Wait for the threads, drop what is left; True if all threads ended."""
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        ended = not any(thread.is_alive() for thread in self._threads)
        if ended:
            for worker in self._workers:
                try:
                    worker.on_stop()
                except Exception:
                    logger.exception("%s: on_stop() raised", worker.name)
        # With a thread still running (a handler that would not return) the
        # broker lock may never come free: drop without it, and again once
        # a later stop() sees the thread end.
        with self._broker_lock if ended else contextlib.nullcontext():
            self._discard_everything()
        if ended:
            self._stopped_event.set()
        return ended

    def _on_own_worker(self) -> bool:
        worker = current_worker()
        return worker is not None and worker.hub is self

    def _drain(self, deadline: float | None) -> bool:
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._join(remaining):
                return False
            with self._broker_lock:
                if not self._queue and not self._busy:
                    return True

    def _wake_inboxes(self) -> None:
        with self._runners_lock:
            inboxes = list(self._inboxes)
        for inbox in inboxes:
            inbox._hub_stopped()

    def _wake_all(self) -> None:
        self._broker_wakeup.set()
        with self._ready_cond:
            self._ready_cond.notify_all()

    def _discard_everything(self) -> None:
        """Drop whatever is still queued at shutdown, counting each delivery."""
        dropped = 0
        queue = self._queue
        while queue:
            item = queue.popleft()
            if isinstance(item, Message):
                subs = [s for s in self._index.route(item.topic) if s.active]
                if subs:
                    item._drop()
                    dropped += len(subs)
            else:
                function, argument = item
                function(argument)  # apply subscription changes, release joins
        for sub in {*self._busy, *self._ready}:
            mailbox = sub.mailbox
            while mailbox:
                item2 = mailbox.popleft()
                if isinstance(item2, Message):
                    item2._drop()
                    dropped += 1
                else:
                    item2.done()
            sub.scheduled = False
        self._ready.clear()
        self._busy.clear()
        self._shutdown_drops += dropped

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Hub:
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.astop()

    async def astop(self, timeout: float | None = None, drain: bool = True) -> bool:
        """The async twin of :meth:`stop`: the event loop runs on meanwhile.

        Async handlers on this loop go on running while the hub drains, so
        use this (or ``async with hub``) rather than ``stop()`` in async code.
        """
        import asyncio

        from ._asyncio import running_loop

        timeout = _check_timeout(timeout)
        runner = self._runners.get(running_loop())
        if runner is not None and runner.in_handler():
            raise RuntimeError("Hub.astop() cannot be awaited in a handler of the same hub")
        return await asyncio.get_running_loop().run_in_executor(None, self.stop, timeout, drain)

    def _check_not_on_handler_loop(self, method: str) -> None:
        """Refuse to block the event loop this hub's async handlers need."""
        if not self._runners:
            return
        from ._asyncio import running_loop

        loop = running_loop()
        if loop is not None and loop in self._runners:
            raise RuntimeError(
                f"Hub.{method}() would block the event loop that runs this hub's async handlers "
                f"(and wait for them forever); use await hub.a{method}() in async code"
            )

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every message sent before this call has been handled.

        "Handled" means delivered to every matching subscription or dropped
        (expired, unsubscribed, or at shutdown). Returns False if ``timeout``
        seconds passed first. Messages that handlers send meanwhile are not
        waited for. Cannot be called from a handler of this hub (it would
        wait for itself).
        """
        timeout = _check_timeout(timeout)
        if self._state == _NEW:
            raise RuntimeError(f"{self.name} has not been started; call start() first")
        if self._on_own_worker():
            raise RuntimeError("Hub.join() cannot be called from a handler of the same hub")
        self._check_not_on_handler_loop("join")
        return self._join(timeout)

    async def ajoin(self, timeout: float | None = None) -> bool:
        """The async twin of :meth:`join`: waits without blocking the event loop.

        Returns False if ``timeout`` seconds passed first. Cannot be awaited
        in an async handler of this hub (that handler's own turn would be
        waited for).
        """
        import asyncio

        timeout = _check_timeout(timeout)
        if self._state == _NEW:
            raise RuntimeError(f"{self.name} has not been started; call start() first")
        if self._on_own_worker():
            raise RuntimeError("Hub.ajoin() cannot be awaited in a handler of the same hub")
        loop = asyncio.get_running_loop()
        runner = self._runners.get(loop)
        if runner is not None and runner.in_handler():
            raise RuntimeError("Hub.ajoin() cannot be awaited in a handler of the same hub")
        future: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not future.done():
                future.set_result(None)

        def fired() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(resolve)

        if not self._queue_join_token(JoinToken(fired)):
            return True
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return True

    def _join(self, timeout: float | None) -> bool:
        token = JoinToken()
        if not self._queue_join_token(token):
            return True
        return token.wait(timeout)

    def _queue_join_token(self, token: JoinToken) -> bool:
        """Send ``token`` through the stages; False when the hub has stopped."""
        if self._state == _STOPPED:
            return False
        item = (self._place_join_token, token)
        self._queue.append(item)
        self._wake_broker()
        if self._state == _STOPPED:
            # Checked after the append, as in _publish: stop() either took
            # the token (and released it) or it is taken back here.
            try:
                self._queue.remove(item)
            except ValueError:
                pass
            else:
                return False
        return True

    # -- what the broker stage applies, in queue order -----------------------

    def _place_join_token(self, token: JoinToken) -> None:
        if self._runners:
            # A loop closed by hand mid-turn would hold its subscriptions
            # (and this token) forever: notice it now.
            for runner in list(self._runners.values()):
                runner.check_closed()
        with self._ready_lock:
            busy = list(self._busy)  # ended ones too: their drops are part of what join() waits for
        token.add(len(busy))
        for sub in busy:
            mailbox = sub.mailbox
            if mailbox is None:
                mailbox = sub.mailbox = deque()
            mailbox.append(token)
        self._schedule(busy)
        token.done()

    def _add_subscription(self, sub: Subscription) -> None:
        if sub.active:
            self._index.add(sub.topic, sub)
            sub.live = True

    def _remove_subscription(self, sub: Subscription) -> None:
        if sub.live:
            sub.live = False
            self._index.remove(sub.topic, sub)

    def _route(self, messages: list[Message], counters: dict[str, int], own: str | None = None) -> None:
        """Append each message to the mailbox of every subscription it reaches.

        Called by the broker stage under the broker lock, in hub order. With
        ``own`` (this hub's token, for messages that came back through a
        network broker) a subscription does not get this hub's messages that
        were sent before it subscribed.
        """
        route = self._index.route
        touched: dict[Subscription, None] = {}
        last_topic: str | None = None
        subs: tuple[Subscription, ...] = ()
        for message in messages:
            topic = message.topic
            if topic is not last_topic:
                # Runs of messages on one topic are common: route once.
                last_topic = topic
                subs = route(topic)
            if own is not None and message._meta[1] == own:
                sent = message._meta[0]
                targets = [sub for sub in subs if sub.since < sent]
            else:
                targets = subs  # type: ignore[assignment]
            for sub in targets:
                if sub.active:
                    mailbox = sub.mailbox
                    if mailbox is None:
                        mailbox = sub.mailbox = deque()
                    mailbox.append(message)
                    touched[sub] = None
                else:
                    counters["dropped_unsubscribed"] += 1
        if touched:
            self._schedule(touched)

    def _schedule(self, subs: Iterable[Subscription]) -> None:
        """Put subscriptions with new mail on the ready queue (once each).

        Those with a runner of their own (async handlers, inboxes) are
        handed to it instead, after the ready lock is released.
        """
        ready = self._ready
        busy = self._busy
        elsewhere: list[Subscription] | None = None
        with self._ready_cond:
            added = 0
            for sub in subs:
                if sub.scheduled:
                    continue
                runner = sub.runner
                if runner is None:
                    sub.scheduled = True
                    busy.add(sub)
                    ready.append(sub)
                    added += 1
                    continue
                if runner.tracked:
                    sub.scheduled = True
                    busy.add(sub)
                if elsewhere is None:
                    elsewhere = []
                elsewhere.append(sub)
            idle = self._idle_task_workers
            if idle and added:
                self._ready_cond.notify(min(idle, added))
        if elsewhere is not None:
            for sub in elsewhere:
                sub.runner.schedule(sub)  # type: ignore[union-attr]

    # -- the sending side --------------------------------------------------

    def _publish(
        self,
        topic: str,
        data: dict[str, Any],
        expiry: datetime | timedelta | None,
        local: bool,
        droppable: bool,
    ) -> Message:
        if expiry is None:
            message = Message(topic, data, None, (next(self._seq), self._token, _time(), None, local, droppable))
        else:
            absolute, deadline = resolve_expiry(expiry)
            meta = (next(self._seq), self._token, _time(), absolute, local, droppable)
            message = Message(topic, data, deadline, meta)
        if self._codec is not None and not local:
            if self._refusing:
                self._network.refuse()
            message._wire = self._codec.encode_message(message)
        queue = self._queue
        if self._inline and not queue and self._normal:
            # Nothing is queued before this message and no broker is
            # routing: after a quiet spell, route it here, in its place in
            # the order, and spare it the hand-off to the broker thread
            # (latency). In a stream of sends the broker's batches are
            # cheaper per message (throughput), so those are queued. Never
            # waits: a busy broker lock means the queue. Not when this
            # thread already holds the lock (a broker mid-batch would be
            # overtaken).
            now = _monotonic()
            quiet = now - self._last_send >= QUIET
            self._last_send = now
            lock = self._broker_lock
            if quiet and not lock._is_owned() and lock.acquire(False):  # type: ignore[attr-defined]
                try:
                    if not queue:
                        self._route([message], self._inline_counters)
                        return message
                finally:
                    lock.release()
        queue.append(message)
        if self._broker_waiting:
            # Once: the broker cannot run while this thread holds the GIL,
            # and a burst of set() calls would cost more than the sends.
            self._broker_waiting = False
            self._broker_wakeup.set()
        if self._state == _STOPPED:
            # Checked after the append: stop() sets _STOPPED before it drops
            # what is left, so the message was either dropped and counted
            # there (return it, is_dropped() tells) or is taken back here.
            try:
                queue.remove(message)
            except ValueError:
                return message
            raise HubClosedError(self.name)
        return message

    def _control(self, function: Callable[[Any], None], argument: object) -> None:
        """Queue a subscription change behind the messages already sent."""
        if self._state == _STOPPED:
            with self._broker_lock:
                function(argument)
            return
        self._queue.append((function, argument))
        self._wake_broker()

    def _wake_broker(self) -> None:
        if self._broker_waiting:
            self._broker_waiting = False
            self._broker_wakeup.set()

    def _subscribe(self, sub: Subscription) -> None:
        if self._state == _STOPPED:
            raise HubClosedError(self.name)
        sub.since = _peek(self._seq)
        self._control(self._add_subscription, sub)
        self._publish(SUBSCRIBE_TOPIC, {"topic": sub.topic}, None, True, False)

    def _unsubscribe(self, sub: Subscription, wait: bool) -> None:
        sub.active = False
        self._control(self._remove_subscription, sub)
        worker = sub.running_on
        if wait and worker is not None and current_worker() is None:
            # Wait for a call in progress. Never from a handler: it could
            # hold something that call is waiting for (another
            # unsubscribe(), a lock of the application) and both would
            # wait forever.
            worker._wait_until_done(sub)
        if self._state != _STOPPED:
            try:
                self._publish(UNSUBSCRIBE_TOPIC, {"topic": sub.topic}, None, True, False)
            except HubClosedError:
                pass  # the hub stopped meanwhile; nobody is left to tell

    # -- introspection -----------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters since the hub was created (or, in a forked child, since the fork).

        - ``sent``: messages accepted by ``send`` (internal ones included)
        - ``delivered``: handler calls made
        - ``dropped_expired``: deliveries skipped because the message expired
        - ``dropped_shutdown``: deliveries dropped when the hub stopped
        - ``dropped_unsubscribed``: deliveries skipped because the subscription ended first
        - ``handler_errors``: handler calls that raised
        - ``dropped_overflow``: messages an inbox (``tidings.subscribe``) had
          no room for, by its overflow policy
        - ``ended_loop_closed``: async subscriptions ended because their
          event loop shut down
        - ``pending``: messages not yet routed, deliveries not yet made, and
          messages waiting in inboxes
        - ``subscriptions``: subscriptions in the index
        """
        keys = ("delivered", "dropped_expired", "dropped_unsubscribed", "handler_errors")
        counts = dict.fromkeys((*keys, "dropped_shutdown", "dropped_overflow", "ended_loop_closed"), 0)
        counts["dropped_shutdown"] = self._shutdown_drops
        for runner in list(self._all_runners):
            runner.fold_if_gone()
        with self._runners_lock:
            sources = [self._retired, self._inline_counters, *[r._counters for r in self._all_runners]]
            sources += [inbox.counters for inbox in self._inboxes]
            buffered = sum(len(inbox.mailbox) for inbox in self._inboxes)
        sources += [w._counters for w in self._workers]
        for source in sources:
            for key, value in source.items():
                if key in counts:
                    counts[key] += value
        in_hand = sum(operator.length_hint(w._in_hand) for w in self._workers)
        with self._broker_lock:
            with self._ready_lock:
                busy = list(self._busy)
            mailboxes = sum(len(sub.mailbox or ()) for sub in busy)
            subscriptions = self._subscription_count
        sent = _peek(self._seq) - 1
        stats = {
            "sent": sent,
            **counts,
            "pending": len(self._queue) + mailboxes + in_hand + buffered,
            "subscriptions": subscriptions,
        }
        if self._network is not None:
            stats.update(self._network.stats())
        return stats

    def _handler_failed(self, sub: Subscription, message: Message, exc: BaseException) -> None:
        """A handler without an error handler raised: log it (tests override this)."""
        logger.error("handler %r of channel %r raised on %r", sub.handler, sub.topic, message, exc_info=exc)

    def topics(self) -> list[str]:
        """The distinct topics that have subscriptions."""
        with self._broker_lock:
            return self._index.topics()

    def __repr__(self) -> str:
        return f"<Hub {self.name} {self._state}>"

    # -- fork --------------------------------------------------------------

    def _before_fork(self) -> None:
        # Hold the locks across fork() so the child never copies the index
        # or the ready queue half-changed; bounded, so fork() cannot hang.
        self._fork_held = [lock for lock in (self._broker_lock, self._ready_lock) if lock.acquire(timeout=2.0)]

    def _after_fork_in_parent(self) -> None:
        for lock in getattr(self, "_fork_held", ()):
            lock.release()
        self._fork_held = []

    def _after_fork_in_child(self) -> None:
        # Only the forking thread survives. Keep the subscriptions (a
        # pre-forking server subscribes at import time, in the parent);
        # forget the parent's undelivered messages, or both processes would
        # deliver them; rebuild locks and threads.
        self._fork_held = []
        # Subscription changes still queued were made before the fork and
        # belong to both processes: apply them here, in order.
        changes = (self._add_subscription, self._remove_subscription)
        queued = [item for item in self._queue if not isinstance(item, Message) and item[0] in changes]
        self._reset_runtime()
        for function, argument in queued:
            function(argument)
        self._state_lock = threading.Lock()
        self._stopped_event = threading.Event()
        self._runners_lock = threading.Lock()
        worker = current_worker()
        for sub in self._index:
            sub.since = 0  # the child numbers its messages from 1 again
            if sub.mailbox is not None:
                sub.mailbox.clear()
            if worker is not None and sub.running_on is worker:
                # fork() from inside this handler: the call goes on in the
                # child, and will release the subscription when it returns.
                self._busy.add(sub)
                continue
            sub.scheduled = False
            sub.running_on = None
        if worker is not None and worker.hub is self:
            worker._retired = True  # this thread leaves its loop after the call
            worker._reset_after_fork()
        if self._state == _STOPPED:
            self._stopped_event.set()
        if self._state in (_RUNNING, _STOPPING):
            self._state = _RUNNING
            classes = [type(self._workers[0]), type(self._workers[-1])] if self._workers else []
            self._workers = []
            self._threads = []
            # A network broker's connections and threads belong to the
            # parent: the child opens its own (with a publisher id of its own).
            resume = getattr(self._network, "position", None)
            self._network = None
            self._network_resume = resume  # the child reads on from where the parent was
            self._refusing = False
            if classes:
                workers = self._make_workers(classes[0], classes[1])
                for worker in workers:
                    worker.on_start()
                self._start_threads(workers)


# -- fork handling for every hub -----------------------------------------

_hubs: weakref.WeakSet[Hub] = weakref.WeakSet()


def _before_fork() -> None:
    for hub in list(_hubs):
        hub._before_fork()


def _after_fork_in_parent() -> None:
    for hub in list(_hubs):
        hub._after_fork_in_parent()


def _after_fork_in_child() -> None:
    global _default_lock
    _default_lock = threading.Lock()
    for hub in list(_hubs):
        hub._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


# -- the default hub -----------------------------------------------------

_default: Hub | None = None
_default_settings: Settings | None = None
_default_lock = threading.Lock()
_atexit_registered = False
_exiting = False


def default_hub() -> Hub:
    """The process-wide hub that channels use when given no ``hub``.

    Created and started on first use with the settings given to
    :func:`configure` (or the environment's ``TIDINGS_*`` variables), and
    stopped, drained, at interpreter exit (for at most
    ``CHANNEL_SHUTDOWN_TIMEOUT`` seconds). After it has been stopped, the
    next call creates a new one.
    """
    global _default, _atexit_registered
    hub = _default
    if hub is not None and (hub._state != _STOPPED or _exiting):
        return hub
    with _default_lock:
        hub = _default
        if hub is not None and _exiting:
            # Stopped at interpreter exit: nothing would drain a new hub,
            # so sends must fail loudly (HubClosedError) rather than vanish.
            return hub
        if hub is None or hub._state == _STOPPED:
            hub = Hub(_default_settings, name="default")
            hub.start()
            _default = hub
            if not _atexit_registered:
                atexit.register(_stop_default_hub)
                _atexit_registered = True
        return hub


def configure(**settings: Any) -> Settings:
    """Set the default hub's settings; call before the default hub is used.

    Takes the keyword arguments of :class:`Settings` and returns the
    resulting ``Settings``. Raises RuntimeError when the default hub is
    already running.
    """
    global _default_settings
    new = Settings(**settings)
    with _default_lock:
        if _default is not None and _default._state != _STOPPED:
            raise RuntimeError("the default hub is already running; call tidings.configure() before first use")
        _default_settings = new
    return new


def _stop_default_hub() -> None:
    global _exiting
    _exiting = True
    hub = _default
    if (
        hub is not None
        and hub._state in (_RUNNING, _STOPPING)
        and not hub.stop(timeout=hub.settings.CHANNEL_SHUTDOWN_TIMEOUT)
    ):
        logger.warning("the default hub did not drain within CHANNEL_SHUTDOWN_TIMEOUT at exit")
