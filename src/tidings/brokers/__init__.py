"""Network brokers: one channel space across processes and machines.

``_base`` holds what every network broker needs (the wire format, signing,
de-duplication, gap detection); each engine is one module beside it
(``redis``). A broker is chosen by the scheme of ``CHANNEL_BROKER_URL`` and
imported only then, so ``import tidings`` never imports a client library.
"""
