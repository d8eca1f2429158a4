"""The two stages behind the hub: the message broker and the task worker.

Both derive from :class:`Worker`, whose thread calls ``run()`` again and
again while the hub runs. ``run()`` uses the helpers of the base class:

- broker side: :meth:`Worker.get_message`, :meth:`Worker.get_channels`,
  :meth:`Worker.schedule_task`;
- worker side: :meth:`Worker.get_task`, :meth:`Worker.run_task`.

An empty queue is a normal idle tick: ``get_message`` and ``get_task`` wait
up to ``CHANNEL_WORKER_TIMEOUT`` seconds and then return None.

A custom broker is a subclass named in ``CHANNEL_MESSAGE_BROKER_CLASS``::

    class AuditingBroker(tidings.MessageBroker):
        def run(self):
            message = self.get_message()
            if message is None:
                return                      # idle tick
            audit_log.append(message.topic)
            for channel in self.get_channels(message):
                self.schedule_task(channel, message)

Broker threads take turns: the broker lock is taken by the first
``get_message`` of a ``run()`` call and released when ``run()`` returns, so
messages are routed in the order they were sent however many broker threads
there are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ._hub import _STOPPING, Control, _thread_state
from ._message import Message, _new_message
from ._subscription import JoinToken, Subscription

if TYPE_CHECKING:
    from ._channel import Channel
    from ._hub import Hub

__all__ = ["MessageBroker", "Task", "TaskWorker", "Worker"]

logger = logging.getLogger("tidings")

_monotonic = time.monotonic

# How many items one broker turn routes, and how many messages of one
# subscription a worker handles before giving others a turn.
BROKER_BATCH = 512
TASK_BATCH = 64


class Task:
    """A turn of one subscription: messages to run on its handler, in order.

    Every task that :meth:`Worker.get_task` returns must be passed to
    :meth:`Worker.run_task` exactly once: until then its subscription is
    held by this worker and gets no other turn.
    """

    __slots__ = ("_items", "_subscription")

    def __init__(self, subscription: Subscription, items: list[Message | JoinToken]) -> None:
        self._subscription = subscription
        self._items = items

    @property
    def channel(self) -> Channel:
        return self._subscription.channel

    @property
    def messages(self) -> list[Message]:
        return [item for item in self._items if isinstance(item, Message)]

    def __repr__(self) -> str:
        return f"<Task {self._subscription.topic!r} messages={len(self.messages)}>"


class Worker:
    """Base class of the broker and task-worker stages.

    The hub creates ``MAX_CHANNEL_*_THREADS`` instances of each class and
    runs each on its own thread, calling :meth:`run` until the hub stops.
    An exception escaping ``run()`` is logged and the loop goes on.
    """

    def __init__(self, hub: Hub, name: str) -> None:
        self.hub = hub
        self.name = name
        self.timeout: float = hub.settings.CHANNEL_WORKER_TIMEOUT
        self._holds_broker_lock = False
        self._took_message = False  # get_message() returned a message in this run()
        # unsubscribe() from outside a handler waits here for a call in progress.
        self._done = threading.Condition(threading.Lock())
        self._waiters = 0
        self._retired = False  # set in a child forked from a handler on this thread
        # The rest of the task in hand, for Hub.stats()["pending"].
        self._in_hand: Iterator[Message | JoinToken] = iter(())
        # Only this worker's thread writes these; Hub.stats() adds them up.
        self._counters: dict[str, int] = dict.fromkeys(
            ("delivered", "dropped_expired", "dropped_unsubscribed", "dropped_shutdown", "handler_errors"), 0
        )

    def run(self) -> None:
        """One turn of the stage; called again and again while the hub runs."""
        raise NotImplementedError

    def on_start(self) -> None:
        """Called on the thread that starts the hub, before the worker threads start."""

    def on_stop(self) -> None:
        """Called when the hub has stopped and the worker threads have ended."""

    @property
    def running(self) -> bool:
        """False once the hub has told its threads to stop."""
        return self.hub._alive

    def _main(self) -> None:
        _thread_state.worker = self
        hub = self.hub
        while hub._alive and not self._retired:
            try:
                self._took_message = False
                self.run()
            except BaseException:  # nothing ends a worker thread but the hub stopping
                logger.exception("%s: run() raised; continuing", self.name)
            finally:
                if self._holds_broker_lock:
                    self._holds_broker_lock = False
                    hub._broker_lock.release()

    # -- broker side -------------------------------------------------------

    def _wait_for_items(self) -> bool:
        """Wait up to ``timeout`` for the global queue to have an item."""
        hub = self.hub
        queue = hub._queue
        if queue:
            return True
        wakeup = hub._broker_wakeup
        wakeup.clear()
        hub._broker_waiting = True
        try:
            if queue or not hub._alive:
                return bool(queue)
            wakeup.wait(self.timeout)
        finally:
            hub._broker_waiting = False
        return bool(queue)

    def _take_broker_lock(self) -> None:
        if not self._holds_broker_lock:
            self.hub._broker_lock.acquire()
            self._holds_broker_lock = True

    def _take_items(self) -> list[Message | Control]:
        """Up to BROKER_BATCH items from the global queue, taking the broker lock.

        An empty list is an idle tick. Only a broker holding the lock takes
        items, so the queue can only grow meanwhile.
        """
        if not self._wait_for_items():
            return []
        self._take_broker_lock()
        queue = self.hub._queue
        popleft = queue.popleft
        return [popleft() for _ in range(min(len(queue), BROKER_BATCH))]

    def get_message(self) -> Message | None:
        """The next message from the global queue, or None after an idle wait.

        Subscription changes queued between messages are applied here, in
        order. The first call in a ``run()`` takes the broker lock, which is
        released when ``run()`` returns.
        """
        if not self._wait_for_items():
            return None
        self._take_broker_lock()
        hub = self.hub
        queue = hub._queue
        while queue:
            item = queue.popleft()
            if isinstance(item, Message):
                if hub._state == _STOPPING and item.droppable:
                    self._drop_at_shutdown(item)
                    continue
                self._took_message = True
                return item
            if self._took_message:
                # A subscription change or join token must not overtake
                # messages this run() took but may not have routed yet: it
                # waits for the next run().
                queue.appendleft(item)
                return None
            function, argument = item
            function(argument)
        return None

    def get_channels(self, message: Message) -> list[Channel]:
        """The channels subscribed to topics that ``message`` reaches."""
        return [sub.channel for sub in self.hub._index.route(message.topic) if sub.active]

    def schedule_task(self, channel: Channel, message: Message) -> None:
        """Queue ``message`` for ``channel``'s handler, behind its earlier ones."""
        sub = channel._subscription
        if sub is None or not sub.live or not sub.active:
            # Unsubscribed since get_channels() (perhaps subscribed again:
            # that newer subscription did not exist when this was sent).
            self._counters["dropped_unsubscribed"] += 1
            return
        mailbox = sub.mailbox
        if mailbox is None:
            mailbox = sub.mailbox = deque()
        mailbox.append(message)
        self.hub._schedule((sub,))

    def _drop_at_shutdown(self, message: Message) -> None:
        count = sum(1 for sub in self.hub._index.route(message.topic) if sub.active)
        if count:
            message._drop()
            self._counters["dropped_shutdown"] += count

    # -- worker side -------------------------------------------------------

    def get_task(self) -> Task | None:
        """The next subscription with messages to run, or None after an idle wait."""
        hub = self.hub
        ready = hub._ready
        try:
            sub = ready.popleft()
        except IndexError:
            with hub._ready_cond:
                if not ready and hub._alive:
                    hub._idle_task_workers += 1
                    try:
                        hub._ready_cond.wait(self.timeout)
                    finally:
                        hub._idle_task_workers -= 1
                try:
                    sub = ready.popleft()
                except IndexError:
                    return None
        mailbox = sub.mailbox
        assert mailbox is not None  # scheduled only with mail
        # Only the broker adds to the mailbox meanwhile: len() can only grow.
        popleft = mailbox.popleft
        items = [popleft() for _ in range(min(len(mailbox), TASK_BATCH))]
        self._in_hand = iter(items)
        return Task(sub, items)

    def run_task(self, task: Task) -> None:
        """Run the task's messages on its handler, in order, then release it.

        Expired messages are dropped, and nothing runs once the subscription
        has ended. A handler that raises is logged on the ``tidings`` logger
        (or reported to its scope) and counted; the next message still runs.
        """
        sub = task._subscription
        hub = self.hub
        handler = sub.handler
        items = task._items
        delivered = 0
        sub.running_on = self
        # Iterating one iterator: what it has not yet yielded is what is
        # pending (its length hint) and, after an escape, what was not reached.
        rest = self._in_hand = iter(items)
        try:
            for item in rest:
                if not isinstance(item, Message):
                    # A join token: what join() waits for is counted first.
                    self._counters["delivered"] += delivered
                    delivered = 0
                    item.done()
                    continue
                # One check on the common path; _may_deliver sorts out
                # the rest (ended subscription, stopping hub).
                if not (sub.active and hub._normal) and not self._may_deliver(item, sub):
                    continue
                deadline = item._deadline
                if deadline is not None and _monotonic() >= deadline:
                    item._drop()
                    self._counters["dropped_expired"] += 1
                    continue
                # The copy this call gets: its own data dict, three stores
                # (the hottest loop; other fields are read through _origin).
                message = _new_message(Message)
                message.topic = item.topic
                message.data = item.data.copy()
                message._origin = item
                try:
                    result = handler(message)
                    if result is not None and hasattr(result, "__await__"):
                        _refuse_awaitable(result)
                except BaseException as exc:  # a handler must not end a worker thread
                    self._counters["handler_errors"] += 1
                    _report(sub, message, exc)
                delivered += 1
        finally:
            sub.running_on = None
            if self._waiters:
                with self._done:
                    self._done.notify_all()
            counters = self._counters
            counters["delivered"] += delivered
            # If something escaped mid-task, what was not reached is dropped
            # rather than left holding join() callers.
            for item in list(rest):
                if isinstance(item, Message):
                    counters["dropped_shutdown"] += 1
                else:
                    item.done()
            self._release(sub)

    def _may_deliver(self, message: Message, sub: Subscription) -> bool:
        """The uncommon cases of run_task: count and drop, or let through."""
        hub = self.hub
        if not sub.active:
            self._counters["dropped_unsubscribed"] += 1
            return False
        if not hub._alive or (hub._state == _STOPPING and message.droppable):
            message._drop()
            self._counters["dropped_shutdown"] += 1
            return False
        return True

    def _wait_until_done(self, sub: Subscription) -> None:
        """Wait until this worker is no longer running ``sub`` (for unsubscribe)."""
        with self._done:
            self._waiters += 1
            try:
                while sub.running_on is self:
                    self._done.wait()
            finally:
                self._waiters -= 1

    def _reset_after_fork(self) -> None:
        self._done = threading.Condition(threading.Lock())
        self._waiters = 0

    def _release(self, sub: Subscription) -> None:
        hub = self.hub
        mailbox = sub.mailbox
        while True:
            with hub._ready_cond:
                if not mailbox:
                    sub.scheduled = False
                    hub._busy.discard(sub)
                    return
                if sub.active:
                    ready = hub._ready
                    ready.append(sub)
                    # This worker takes the next turn itself; wake another
                    # only when there is more than that one turn waiting.
                    if len(ready) > 1 and hub._idle_task_workers:
                        hub._ready_cond.notify()
                    return
            # Ended while messages were waiting: account for them here.
            counters = self._counters
            while mailbox:
                try:
                    item = mailbox.popleft()
                except IndexError:
                    break
                if isinstance(item, Message):
                    counters["dropped_unsubscribed"] += 1
                else:
                    item.done()


def _refuse_awaitable(result: object) -> None:
    """A handler run on a thread returned an awaitable that nothing would await."""
    close = getattr(result, "close", None)
    if close is not None:
        close()  # no "never awaited" warning on top of this error
    raise TypeError(
        f"the handler returned {type(result).__name__} {result!r}, which a task-worker thread cannot "
        "await; subscribe an async def handler directly (it then runs on your event loop)"
    )


def _report(sub: Subscription, message: Message, exc: BaseException) -> None:
    on_error = sub.on_error
    if on_error is None:
        sub.channel._hub._handler_failed(sub, message, exc)
        return
    try:
        result = on_error(exc, message)
        if result is not None and hasattr(result, "__await__"):
            _refuse_awaitable(result)
    except BaseException:  # the error handler must not end a worker thread either
        logger.exception("the error handler of channel %r raised", sub.topic)


class MessageBroker(Worker):
    """The default broker: routes each message to every matching subscription.

    Takes runs of up to 512 queued items at a time and puts a subscription on
    the ready queue once per run, however many messages it got.
    """

    def run(self) -> None:
        hub = self.hub
        stopping = hub._state == _STOPPING
        batch: list[Message] = []
        for item in self._take_items():
            if isinstance(item, Message):
                if stopping and item.droppable:
                    self._drop_at_shutdown(item)
                else:
                    batch.append(item)
            else:
                # A subscription change or a join token applies after
                # everything before it was routed.
                if batch:
                    hub._route(batch, self._counters)
                    batch = []
                function, argument = item
                function(argument)
        if batch:
            hub._route(batch, self._counters)


class TaskWorker(Worker):
    """The default task worker: runs subscriptions' handlers, one turn at a time."""

    def run(self) -> None:
        task = self.get_task()
        if task is not None:
            self.run_task(task)
