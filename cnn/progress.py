"""How long work (an ingest, a training) tells its caller how far it is."""

from collections.abc import Callable

Progress = Callable[[float], None]
"""Told the share of the work done, from 0.0 to 1.0, as it goes; it throttles itself."""
