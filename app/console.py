"""What a `malaria` command prints of the log: Prefect's lines as they are, each error on its
line without its traceback unless `--debug` asks for it. The flow run's log on the server (the
Prefect UI) keeps every traceback."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _WithoutTraceback(logging.Formatter):
    """Another formatter's lines, without the traceback or stack a record carries."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.formatter = formatter

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            cleared = {"exc_info": None, "exc_text": None, "stack_info": None}
            record = logging.makeLogRecord({**record.__dict__, **cleared})
        return self.formatter.format(record)


@contextmanager
def console_tracebacks(shown: bool) -> Iterator[None]:
    """While open, Prefect's console handlers print no tracebacks, unless `shown`. Call it
    once Prefect is imported (its import sets up those handlers)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    if shown:
        yield
        return
    handlers = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, PrefectConsoleHandler) and handler.formatter is not None
    ]
    formatters = [handler.formatter for handler in handlers]
    for handler, formatter in zip(handlers, formatters, strict=True):
        handler.setFormatter(_WithoutTraceback(formatter))
    try:
        yield
    finally:
        for handler, formatter in zip(handlers, formatters, strict=True):
            handler.setFormatter(formatter)
