"""Topics: validation, fnmatch-style matching, and the subscription index.

A topic is a non-empty ``str`` without whitespace or control characters.
``*``, ``?`` and ``[...]`` are wildcards with the meaning of
:func:`fnmatch.fnmatchcase` (case-sensitive on every OS, ``*`` matches across
dots). Wildcards work on both sides: a message sent on ``T`` reaches a
subscription on ``S`` when ``T == S``, ``T`` matches the pattern ``S``, or
``S`` matches the pattern ``T``.

:class:`TopicIndex` answers "which subscriptions does a message on ``T``
reach" without scanning every subscribed topic: exact topics are a dict
lookup, patterns are bucketed by their literal prefix (or, for patterns that
start with a wildcard, their literal suffix), and answers are cached until the
index changes. Only patterns with neither a literal prefix nor a literal
suffix (``*a*``) and messages sent on a wildcard topic are matched by a scan.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["TopicIndex", "check_topic", "is_pattern", "topics_match"]

_WILDCARDS = re.compile(r"[*?\[]")
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")

# topic -> is_pattern, for topics that passed validation. Channel('x').send()
# is the idiomatic way to publish, so a topic is usually checked many times.
_checked: dict[str, bool] = {}
_CHECKED_MAX = 65536


def check_topic(topic: object) -> bool:
    """Validate ``topic`` and return whether it is a wildcard pattern.

    Raises ``TypeError`` for a non-string and ``ValueError`` for an empty
    topic or one containing whitespace or control characters.
    """
    if type(topic) is str:
        known = _checked.get(topic)
        if known is not None:
            return known
    # A str subclass is refused rather than converted: it could override
    # __eq__ or __hash__, and the index relies on both.
    if not isinstance(topic, str) or type(topic) is not str:
        raise TypeError(f"a topic must be a str, not {type(topic).__name__}")
    if not topic:
        raise ValueError("a topic must not be empty")
    bad = _FORBIDDEN.search(topic)
    if bad is not None:
        raise ValueError(
            f"topic {topic!r} contains {bad.group()!r} at index {bad.start()}; "
            "topics may not contain whitespace or control characters"
        )
    pattern = _WILDCARDS.search(topic) is not None
    if len(_checked) >= _CHECKED_MAX:
        _checked.clear()
    _checked[topic] = pattern
    return pattern


def is_pattern(topic: str) -> bool:
    """Whether ``topic`` contains a wildcard (``*``, ``?`` or ``[``)."""
    return _WILDCARDS.search(topic) is not None


def topics_match(sent: str, subscribed: str) -> bool:
    """The matching rule: equal, or either side matches the other as a pattern.

    This is the specification the index implements; it is used by tests and
    by code that needs a one-off answer.
    """
    return sent == subscribed or fnmatch.fnmatchcase(sent, subscribed) or fnmatch.fnmatchcase(subscribed, sent)


def _compile(pattern: str) -> Callable[[str], object]:
    # Compiled here and kept with the index entry: fnmatch's own cache holds
    # 32,768 patterns, past which every lookup would recompile.
    return re.compile(fnmatch.translate(pattern)).match


S = TypeVar("S", bound=Hashable)


class _Pattern(Generic[S]):
    """A subscribed wildcard topic and its subscriptions.

    ``match`` is compiled on first use (a compiled pattern costs about 400
    bytes, and most subscriptions of a large index are never tested). A
    pattern that is one literal prefix or suffix and a single ``*`` (the
    commonest kind: ``chat.rooms.*``) needs no regular expression at all:
    landing in its bucket is the match.
    """

    __slots__ = ("_match", "in_bucket_matches", "subs", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._match: Callable[[str], object] | None = None
        self.subs: dict[S, None] = {}
        self.in_bucket_matches = False

    def match(self, topic: str) -> object:
        match = self._match
        if match is None:
            match = self._match = _compile(self.topic)
        return match(topic)


class _AffixBuckets(Generic[S]):
    """Patterns bucketed by a literal prefix (or suffix) of a given length.

    A literal topic ``T`` can only match patterns whose literal prefix is a
    prefix of ``T``; ``candidates`` looks up each distinct prefix length once.
    """

    __slots__ = ("_buckets", "_lengths", "_suffix")

    def __init__(self, suffix: bool) -> None:
        self._suffix = suffix
        self._buckets: dict[str, list[_Pattern[S]]] = {}
        self._lengths: dict[int, int] = {}  # affix length -> number of patterns

    def __bool__(self) -> bool:
        return bool(self._lengths)

    def add(self, affix: str, entry: _Pattern[S]) -> None:
        self._buckets.setdefault(affix, []).append(entry)
        n = len(affix)
        self._lengths[n] = self._lengths.get(n, 0) + 1

    def remove(self, affix: str, entry: _Pattern[S]) -> None:
        bucket = self._buckets[affix]
        bucket.remove(entry)
        if not bucket:
            del self._buckets[affix]
        n = len(affix)
        left = self._lengths[n] - 1
        if left:
            self._lengths[n] = left
        else:
            del self._lengths[n]

    def collect(self, topic: str, result: list[S]) -> None:
        """Add the subscriptions of this index's patterns that ``topic`` matches."""
        size = len(topic)
        buckets = self._buckets
        suffix = self._suffix
        for n in self._lengths:
            if n <= size:
                bucket = buckets.get(topic[size - n :] if suffix else topic[:n])
                if bucket:
                    for entry in bucket:
                        if entry.in_bucket_matches or entry.match(topic):
                            result.extend(entry.subs)


class TopicIndex(Generic[S]):
    """Subscriptions by topic, answering which ones a sent topic reaches.

    Not thread-safe: the hub mutates and queries it from the broker stage
    only, under the broker lock. ``route`` returns a tuple in a stable order
    (exact subscriptions first, then pattern subscriptions, each in
    subscription order).
    """

    __slots__ = (
        "_cache",
        "_exact",
        "_pattern_cache",
        "_patterns",
        "_prefixed",
        "_scanned",
        "_size",
        "_suffixed",
    )

    _CACHE_MAX = 65536

    def __init__(self) -> None:
        self._exact: dict[str, dict[S, None]] = {}
        self._patterns: dict[str, _Pattern[S]] = {}
        self._prefixed: _AffixBuckets[S] = _AffixBuckets(suffix=False)
        self._suffixed: _AffixBuckets[S] = _AffixBuckets(suffix=True)
        self._scanned: list[_Pattern[S]] = []
        # Answers for literal topics, and for wildcard topics (kept apart so
        # that a change to one exact topic drops only what it can affect).
        self._cache: dict[str, tuple[S, ...]] = {}
        self._pattern_cache: dict[str, tuple[S, ...]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[S]:
        for subs in self._exact.values():
            yield from subs
        for entry in self._patterns.values():
            yield from entry.subs

    def topics(self) -> list[str]:
        """The distinct subscribed topics."""
        return [*self._exact, *self._patterns]

    def add(self, topic: str, sub: S) -> None:
        """Index ``sub`` under ``topic`` (which must have passed ``check_topic``)."""
        if is_pattern(topic):
            entry = self._patterns.get(topic)
            if entry is None:
                entry = self._patterns[topic] = _Pattern(topic)
                self._place(entry, add=True)
            entry.subs[sub] = None
            self._forget_all()
        else:
            self._exact.setdefault(topic, {})[sub] = None
            self._forget_exact(topic)
        self._size += 1

    def remove(self, topic: str, sub: S) -> None:
        """Remove ``sub`` from ``topic``; a no-op when it is not there."""
        if is_pattern(topic):
            entry = self._patterns.get(topic)
            if entry is None or sub not in entry.subs:
                return
            del entry.subs[sub]
            if not entry.subs:
                del self._patterns[topic]
                self._place(entry, add=False)
            self._forget_all()
        else:
            subs = self._exact.get(topic)
            if subs is None or sub not in subs:
                return
            del subs[sub]
            if not subs:
                del self._exact[topic]
            self._forget_exact(topic)
        self._size -= 1

    def _forget_exact(self, topic: str) -> None:
        self._cache.pop(topic, None)
        # Any wildcard send may reach this topic.
        self._pattern_cache.clear()

    def _forget_all(self) -> None:
        # A pattern can match any topic.
        self._cache.clear()
        self._pattern_cache.clear()

    def _place(self, entry: _Pattern[S], *, add: bool) -> None:
        topic = entry.topic
        first = _WILDCARDS.search(topic)
        assert first is not None
        prefix = topic[: first.start()]
        if prefix:
            entry.in_bucket_matches = topic == prefix + "*"
            (self._prefixed.add if add else self._prefixed.remove)(prefix, entry)
            return
        last = max(topic.rfind("*"), topic.rfind("?"), topic.rfind("]"))
        suffix = topic[last + 1 :]
        if suffix and "[" not in topic:
            entry.in_bucket_matches = topic == "*" + suffix
            (self._suffixed.add if add else self._suffixed.remove)(suffix, entry)
        elif add:
            self._scanned.append(entry)
        else:
            self._scanned.remove(entry)

    def route(self, topic: str) -> tuple[S, ...]:
        """The subscriptions a message sent on ``topic`` reaches."""
        found = self._cache.get(topic)
        if found is not None:
            return found
        pattern = _checked.get(topic)
        if pattern is None:
            pattern = is_pattern(topic)
        if pattern:
            cache = self._pattern_cache
            found = cache.get(topic)
            if found is not None:
                return found
            found = self._route_pattern(topic)
        else:
            cache = self._cache
            found = self._route_literal(topic)
        if len(cache) >= self._CACHE_MAX:
            cache.clear()
        cache[topic] = found
        return found

    def _route_literal(self, topic: str) -> tuple[S, ...]:
        exact = self._exact.get(topic)
        result: list[S] = list(exact) if exact else []
        if self._prefixed:
            self._prefixed.collect(topic, result)
        if self._suffixed:
            self._suffixed.collect(topic, result)
        for entry in self._scanned:
            if entry.match(topic):
                result.extend(entry.subs)
        return tuple(result)

    def _route_pattern(self, topic: str) -> tuple[S, ...]:
        # A wildcard send is matched against every subscribed topic.
        match = _compile(topic)
        result: list[S] = []
        for subscribed, subs in self._exact.items():
            if match(subscribed) is not None:
                result.extend(subs)
        for subscribed, entry in self._patterns.items():
            if subscribed == topic or match(subscribed) is not None or entry.match(topic):
                result.extend(entry.subs)
        return tuple(result)
