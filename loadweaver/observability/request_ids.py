"""Request ids: unique across nodes and restarts without coordination, cheap to make.

An id is a random 64-bit prefix drawn once per process, a dash and a counter, all in hex. A client's
own id is kept when it looks like one: printable ASCII without spaces, at most 200 bytes.
"""

import itertools
import os
import re
from dataclasses import dataclass

valid_request_id = re.compile(rb"[\x21-\x7e]{1,200}").fullmatch


@dataclass(frozen=True, slots=True)
class RequestIdPolicy:
    lowered: bytes  # the header's name as the parsers see it
    line_start: bytes  # `Name: ` as configured, for the lines we write
    respond: bool  # echo it in the response

    @classmethod
    def of(cls, header: str, respond: bool) -> "RequestIdPolicy":
        name = header.encode("latin-1")
        return cls(name.lower(), name + b": ", respond)


class RequestIds:
    __slots__ = ("counter", "prefix")

    def __init__(self) -> None:
        self.prefix = os.urandom(8).hex().encode() + b"-"
        self.counter = itertools.count(1)  # next() on it is one C call: the hot path inlines it

    def next(self) -> bytes:
        return self.prefix + b"%x" % next(self.counter)

    def keep_or_make(self, incoming: bytes | None) -> bytes:
        """The client's id when it is a sound one, else a new one."""
        if incoming is not None and valid_request_id(incoming):
            return incoming
        return self.prefix + b"%x" % next(self.counter)
