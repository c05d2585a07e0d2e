"""What an ingestion run tells its caller: each file's result, the run's report, and progress after every file."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FileResult", "IngestReport", "Progress", "ProgressFn", "Status", "Tally"]

Status = str  # added | updated | unchanged | skipped | failed | removed


@dataclass
class FileResult:
    source: str
    path: str
    status: Status
    reason: str | None = None
    document_id: int | None = None
    pages: int = 0
    chunks: int = 0
    empty_pages: int = 0


@dataclass
class IngestReport:
    collection: str
    results: list[FileResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: {
        "discover": 0.0, "extract": 0.0, "chunk": 0.0, "embed": 0.0, "store": 0.0, "index": 0.0, "total": 0.0})
    chunks_embedded: int = 0
    chunks_reused: int = 0

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def changed(self) -> int:
        return sum(1 for r in self.results if r.status in ("added", "updated", "removed"))

    @property
    def pages(self) -> int:
        return sum(r.pages for r in self.results if r.status in ("added", "updated"))

    @property
    def chunks(self) -> int:
        return sum(r.chunks for r in self.results if r.status in ("added", "updated"))

    def summary(self) -> dict[str, int]:
        return {s: self.count(s) for s in ("added", "updated", "unchanged", "removed", "skipped", "failed")}


@dataclass
class Progress:
    """Sent to the progress callback after every file."""

    files_done: int
    files_total: int
    pages: int
    chunks: int
    elapsed: float
    current: str
    status: Status


ProgressFn = Callable[[Progress], None]


class Tally:
    """Files done so far, for the report and the progress callback."""

    def __init__(self, report: IngestReport, total: int, t0: float, progress: ProgressFn | None) -> None:
        self.report, self.total, self.t0, self.progress = report, total, t0, progress
        self.done = self.pages = self.chunks = 0

    def record(self, res: FileResult, *, reported: bool = False) -> None:
        if not reported:
            self.report.results.append(res)
        self.done += 1
        self.pages += res.pages
        self.chunks += res.chunks
        if self.progress:
            self.progress(Progress(self.done, self.total, self.pages, self.chunks, time.perf_counter() - self.t0,
                                   res.source, res.status))
