"""The ``tidings demo`` web app (needs ``tidings[web]``); see :mod:`tidings._demo.app`."""
