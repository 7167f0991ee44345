"""Logging to Kapsule's log through the ``log`` import.

Messages are rate-limited (default 20 per second per binding; the rest are dropped and counted)
and truncated (default 1 KiB). Never log record contents: they are plaintext. ``print`` output (stdout
and stderr) also reaches the policy log, at info and warn level, under the same limits.
"""


def _log(level_name: str, message: str) -> None:
    import wit_world
    from wit_world.imports.types import Level

    wit_world.log(getattr(Level, level_name), str(message))


def trace(message: str) -> None:
    """Logs at trace level."""
    _log("TRACE", message)


def debug(message: str) -> None:
    """Logs at debug level."""
    _log("DEBUG", message)


def info(message: str) -> None:
    """Logs at info level."""
    _log("INFO", message)


def warn(message: str) -> None:
    """Logs at warn level."""
    _log("WARN", message)


def error(message: str) -> None:
    """Logs at error level."""
    _log("ERROR", message)
