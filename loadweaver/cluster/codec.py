"""Records in Redis are msgpack maps tagged with a schema version, so a node can refuse (with a
sentence) a record written by a newer, incompatible release instead of misreading it."""

from typing import Any

import msgpack

SCHEMA_VERSION = 1


class CodecError(ValueError):
    pass


def encode(value: Any) -> bytes:
    packed: bytes = msgpack.packb({"schema": SCHEMA_VERSION, "data": value}, use_bin_type=True)
    return packed


def decode(raw: bytes) -> Any:
    try:
        envelope = msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.UnpackException) as error:
        raise CodecError(f"not a loadweaver record: {error}") from None
    if not isinstance(envelope, dict) or "schema" not in envelope:
        raise CodecError("not a loadweaver record: no schema version")
    if envelope["schema"] != SCHEMA_VERSION:
        raise CodecError(
            f"record schema {envelope['schema']} is not {SCHEMA_VERSION}: "
            "written by another loadweaver release"
        )
    return envelope["data"]
