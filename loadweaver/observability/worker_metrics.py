"""`--workers N` on one machine: every worker's numbers in the one `/metrics`.

Each worker keeps its own counters. Workers without the admin listener write their exposition to
a directory the parent made, once a second (atomically: a temporary file, then a rename); the
worker that serves `/metrics` reads them and adds each worker's samples under a `worker` label,
its own as worker 0. Sums over the label (`sum without (worker) (...)`) give the node's totals.
"""

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

STALE_SECONDS = 10.0  # a file older than this belongs to a worker that is gone


def exposition_path(directory: Path, worker: int) -> Path:
    return directory / f"worker-{worker}.prom"


def write_exposition(registry: CollectorRegistry, directory: Path, worker: int) -> None:
    """One worker's numbers, replacing its previous file in one rename."""
    final = exposition_path(directory, worker)
    temporary = final.with_suffix(".tmp")
    temporary.write_bytes(generate_latest(registry))
    os.replace(temporary, final)


class MergedRegistry(CollectorRegistry):
    """The serving worker's registry plus the other workers' files, each under `worker`."""

    def __init__(self, own: CollectorRegistry, directory: Path, worker: int) -> None:
        super().__init__(auto_describe=False)
        self._own = own
        self._directory = directory
        self._worker = worker

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        _merge(merged, self._own.collect(), str(self._worker))
        for worker, text in self._others():
            try:
                _merge(merged, text_string_to_metric_families(text), worker)
            except ValueError as error:  # a half-written file cannot happen (rename), but...
                logger.warning("worker {} metrics are unreadable: {}", worker, error)
        yield from merged.values()

    def _others(self) -> Iterable[tuple[str, str]]:
        now = time.time()
        for path in sorted(self._directory.glob("worker-*.prom")):
            worker = path.stem.removeprefix("worker-")
            if worker == str(self._worker):
                continue
            try:
                if now - path.stat().st_mtime > STALE_SECONDS:
                    continue
                yield worker, path.read_text(encoding="utf-8")
            except OSError:
                continue  # the worker replaced or removed it meanwhile


def _merge(merged: dict[str, Metric], families: Iterable[Metric], worker: str) -> None:
    """`_created` series are left out: parsed back they become families of their own, which
    would then be written twice."""
    for family in families:
        if family.name.endswith("_created"):
            continue
        target = merged.get(family.name)
        if target is None:
            target = merged[family.name] = Metric(family.name, family.documentation, family.type)
        if target.type != family.type:
            continue  # workers of different versions disagreeing: keep the first
        target.samples += [
            Sample(s.name, {**s.labels, "worker": worker}, s.value, s.timestamp, s.exemplar)
            for s in family.samples
            if not s.name.endswith("_created")
        ]
