"""Every key of one cluster shares the hash tag `{<cluster name>}`, so all of a script's keys
land in one Redis Cluster slot."""

from dataclasses import dataclass


@dataclass(frozen=True)
class KeySchema:
    cluster: str

    @property
    def prefix(self) -> str:
        return f"lw:{{{self.cluster}}}:"

    @property
    def config(self) -> str:
        return f"{self.prefix}config"  # hash: version, record

    @property
    def events(self) -> str:
        return f"{self.prefix}events"  # pub/sub channel: the new config version

    @property
    def members(self) -> str:
        return f"{self.prefix}members"  # hash: node id -> record

    @property
    def member_expiries(self) -> str:
        return f"{self.prefix}members:expiry"  # hash: node id -> expiry (ms, Redis clock)

    @property
    def lease(self) -> str:
        return f"{self.prefix}leader"  # string "<node id>:<token>", with a TTL

    @property
    def fence(self) -> str:
        return f"{self.prefix}leader:fence"  # counter: the last fencing token issued

    @property
    def verdicts(self) -> str:
        return f"{self.prefix}health"  # hash: "pool/backend" -> verdict

    @property
    def verdict_events(self) -> str:
        return f"{self.prefix}health:events"  # pub/sub channel: a verdict changed

    @property
    def ejections(self) -> str:
        return f"{self.prefix}ejections"  # hash: "pool/backend|node" -> expiry (ms, Redis clock)

    def session(self, pool: str, key: str) -> str:
        return f"{self.prefix}session:{pool}:{key}"

    def bucket(self, name: str) -> str:
        return f"{self.prefix}bucket:{name}"
