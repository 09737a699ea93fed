"""Stream: an answer in many messages (a zone transfer over TCP) that a stream transport writes in order."""

from __future__ import annotations

from collections.abc import Generator


# Its own module, not the pipeline's: a compiled module's classes cannot be subclassed by classes
# that run from source (the RPZ feed's transfer is one), and this one is never compiled.
class Stream:
    """An answer in many messages (a zone transfer over TCP): the transport writes each of `messages()` in order.

    The messages are made as they are written, so an answer of any size holds little memory. The
    transport waits while its connection's send buffer is full and lets other work run between
    two messages. `messages()` raises pipeline.StreamBroken when it cannot finish.
    """

    def messages(self) -> Generator[bytes, None, None]:
        raise NotImplementedError
