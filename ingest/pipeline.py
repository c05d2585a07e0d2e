"""Ingestion: discover → load → chunk → embed → store, incremental and crash-consistent.

- Unchanged files (same sha256 and same added metadata) are skipped without being read twice.
- Changed files replace their document in one transaction; chunks whose ordinal and text did not change keep
  their ids, and any chunk whose text was embedded before reuses its stored vector.
- Each group of documents is committed in one transaction that also bumps the collection generation; the
  faiss index follows after the commit and is saved at the end (see rag/store.py for why that is safe).
- Three stages overlap: an extraction thread loads and chunks files up to two groups ahead, the calling thread
  embeds a group (the embedder's own threads do the work, without the GIL), and a writer thread commits the
  previous group and adds it to the index. On 2 cores the Python work of extraction and storage then fills the
  gaps of the embedder instead of following it (SciFact: it was 19 s of 95 s, serial). The writer keeps its
  share small: one flush for the group's documents, multi-row INSERT ... RETURNING for its chunks.
- A group is cut at ~1,000 chunks, or earlier when the extraction thread is still busy on the next file after
  `_AHEAD_WAIT_S` and at least `_AHEAD_MIN_CHUNKS` chunks wait: a folder of a few large PDFs otherwise extracts
  and embeds in turn (sec-10q, 2 filings: pipeline / embedding alone 1.50 → 1.33, bench/ingest.py).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ctxqa.ingest.added_meta import json_safe, read_sidecar
from ctxqa.ingest.chunk import chunk as chunk_document
from ctxqa.ingest.discover import Found, Problem, discover
from ctxqa.ingest.doc_context import CONTEXT_VERSION, DocContext, document_context
from ctxqa.ingest.loaders import SUPPORTED_SUFFIXES, LoadError, load
from ctxqa.ingest.report import FileResult, IngestReport, ProgressFn, Status, Tally
from ctxqa.rag.config import Settings
from ctxqa.rag.db import repo
from ctxqa.rag.db.models import Chunk, Collection, Document
from ctxqa.rag.db.session import Database
from ctxqa.rag.embed.embedder import Embedder
from ctxqa.rag.index.chunk_text import embedding_text
from ctxqa.rag.index.store import IndexStore
from ctxqa.rag.originals import OriginalStore, file_sha256, prune_unreferenced
from ctxqa.rag.types import ChunkSpec, LoadedDocument

__all__ = ["Ingestor"]

PDF_TYPE = "application/pdf"
# Documents with more sections than this keep none in their metadata (the viewer then shows the headings above
# the chunk that holds a span): the metadata is read with every document listed.
MAX_SECTIONS_KEPT = 2000

# A group is cut early only with a batch worth the call, and when the worker is slow on the next file: embedding
# small groups whenever it lags a little costs more in batching than the overlap gains (SciFact: +17 % embed time).
_AHEAD_MIN_CHUNKS = 64
_AHEAD_WAIT_S = 0.01
_AHEAD_MAX_FILES = 1024


@dataclass
class _Prepared:
    found: Found
    sha256: str
    size: int
    mtime: datetime
    extra_meta: dict[str, Any]
    doc: LoadedDocument | None = None
    specs: list[ChunkSpec] = field(default_factory=list)
    error: LoadError | None = None
    context: DocContext | None = None  # title, date, period and header (ingest/doc_context.py)
    t_extract: float = 0.0
    t_chunk: float = 0.0


@dataclass
class _Plan:
    """What `_embed_group` hands the writer: stored vectors to reuse, the old rows and what was embedded for them,
    each chunk spec's embedding text (by id of the spec), and the fresh vectors. `stamps`: each old document's
    `ingested_at` when its rows were read; the writer keeps old rows only if it is unchanged (no other writer,
    another replica say, replaced the document in between)."""

    reuse: dict[str, bytes] = field(default_factory=dict)
    stamps: dict[int, datetime] = field(default_factory=dict)
    old_rows: dict[int, dict[int, Chunk]] = field(default_factory=dict)
    old_etext: dict[int, str] = field(default_factory=dict)
    etexts: dict[int, str] = field(default_factory=dict)
    fresh: dict[str, bytes] = field(default_factory=dict)


@dataclass
class _Written:
    results: list[FileResult]
    reused: int
    t_store: float
    t_index: float


def _header(prep: _Prepared) -> str:
    """What both indexes see of the document with each chunk: its title and identifying lines."""
    assert prep.context is not None
    return prep.context.header


def _unique_sources(found: list[Found], report: IngestReport) -> list[Found]:
    """Each source once: a second file with the same source (two roots holding the same relative path) fails."""
    seen: set[str] = set()
    todo: list[Found] = []
    for f in found:
        if f.source in seen:
            report.results.append(FileResult(f.source, str(f.path), "failed",
                                             f"duplicate source {f.source!r} in this run (two roots hold the "
                                             f"same relative path); ingest them into separate collections"))
            continue
        seen.add(f.source)
        todo.append(f)
    return todo


class _GroupWriter:
    """Gathers prepared documents into groups of ~`target` chunks, embeds each group in the calling thread and
    hands it to one writer thread, which commits it and adds it to the indexes while the next group is embedded.
    Groups commit in order, one in flight. On an error the group in flight lands (or fails) before the error
    reaches the caller, so every group committed before it stays searchable."""

    def __init__(self, ingestor: Ingestor, coll: Collection, report: IngestReport, tally: Tally) -> None:
        self.ingestor, self.coll, self.report, self.tally = ingestor, coll, report, tally
        # Groups of ~1,000 chunks: big enough that length-bucketed batches come out full (small groups cost ~20 %
        # more embedding time), small enough that progress and commits stay frequent.
        self.target = max(ingestor.settings.embedding_batch_size * 16, 128)
        self.pending: list[tuple[_Prepared, Document | None]] = []
        self.pending_chunks = 0
        self.writing: Future[_Written] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctxqa-store")

    def add(self, prep: _Prepared, old: Document | None, next_ready: bool) -> None:
        self.pending.append((prep, old))
        self.pending_chunks += len(prep.specs)
        # A full group, or the worker is still busy on the next file (a big PDF) with enough waiting to fill
        # batches: embed now rather than idle.
        if self.pending_chunks >= self.target or (not next_ready and self.pending_chunks >= _AHEAD_MIN_CHUNKS):
            self.flush()

    def flush(self) -> None:
        group, self.pending, self.pending_chunks = self.pending, [], 0
        plan = self.ingestor._embed_group(group, self.report)
        self.finish()  # groups commit in order, one in flight
        self.writing = self._pool.submit(self.ingestor._write_group, self.coll, group, plan)

    def poll(self) -> None:
        if self.writing is not None and self.writing.done():
            self.finish()

    def finish(self) -> None:
        """Wait for the group in flight and report it."""
        if self.writing is None:
            return
        done, self.writing = self.writing, None
        out = done.result()
        self.report.results.extend(out.results)
        self.report.chunks_reused += out.reused
        self.report.timings["store"] += out.t_store
        self.report.timings["index"] += out.t_index
        for res in out.results:
            self.tally.record(res, reported=True)

    def close(self) -> None:
        """The last, partial group, then wait for everything to land."""
        if self.pending:
            self.flush()
        self.finish()

    def __enter__(self) -> _GroupWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.writing is not None:  # an error above: let the group in flight land (or fail) before returning
            wait([self.writing])
        self._pool.shutdown(wait=True)


class Ingestor:
    """Holds the long-lived parts (database, index store, embedder) so the CLI and the API share one."""

    def __init__(self, settings: Settings, db: Database, store: IndexStore, embedder: Embedder,
                 tokenizer: Any | None = None) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        self.embedder = embedder
        # Chunking runs in a worker thread while the embedder tokenizes: it needs its own tokenizer instance.
        self.tokenizer = tokenizer if tokenizer is not None else embedder.new_tokenizer()
        # Leave room for [CLS]/[SEP]: a chunk must never be truncated by the embedder.
        self.chunk_size = min(settings.chunk_size, embedder.max_tokens - 2)
        self.chunk_overlap = min(settings.chunk_overlap, self.chunk_size // 2)
        self.originals = OriginalStore(settings.originals_dir)
        self.uploads_dir = settings.uploads_dir.resolve()

    # -- public --------------------------------------------------------------------------------------------
    def ingest(self, paths: Sequence[Path | str], *, collection: str | None = None,
               include: Sequence[str] = (), exclude: Sequence[str] = (), meta: dict[str, Any] | None = None,
               password: str | None = None, prune: bool = False, progress: ProgressFn | None = None,
               sources: dict[Path, str] | None = None) -> IngestReport:
        """Ingest files and folders into `collection`. `sources` overrides the source name of given files
        (the API uses it for uploads, whose temp paths mean nothing to a reader)."""
        t0 = time.perf_counter()
        name = collection or self.settings.default_collection
        report = IngestReport(collection=name)
        with self.db.session() as s:
            coll = repo.ensure_collection(s, name, self.embedder.name, self.embedder.dim, self.settings.index_type)
        roots = [Path(p).expanduser() for p in paths]
        found = self._discover(roots, include, exclude, sources or {}, report)
        report.timings["discover"] = time.perf_counter() - t0
        # Keep the store's cached index in step before applying incremental changes.
        self.store.get(coll)
        with self.db.session() as s:
            existing = repo.documents_by_source(s, coll.id)
        todo = _unique_sources(found, report)

        tally = Tally(report, len(todo), t0, progress)
        with _GroupWriter(self, coll, report, tally) as groups:
            with contextlib.closing(self._prepare_all(todo, existing, meta or {}, password,
                                                      2 * groups.target)) as prepared:
                for prep, next_ready in prepared:
                    groups.poll()  # report a written group now, not at the next flush (progress stays current)
                    report.timings["extract"] += prep.t_extract
                    report.timings["chunk"] += prep.t_chunk
                    old = existing.get(prep.found.source)
                    if prep.error is not None:
                        res = FileResult(prep.found.source, str(prep.found.path),
                                         "skipped" if prep.error.reason in ("empty",) else "failed",
                                         str(prep.error), pages=0)
                        self._record_failure(coll, prep, old, res)
                        tally.record(res)
                    elif prep.doc is None:  # unchanged
                        tally.record(FileResult(prep.found.source, str(prep.found.path), "unchanged",
                                                document_id=old.id if old else None, chunks=0))
                    else:
                        groups.add(prep, old, next_ready)
            groups.close()

        if prune:
            report.results.extend(self._prune(coll, roots, {f.source for f in found}, existing))
        if report.count("updated") or report.count("removed"):
            self.prune_originals()  # an updated PDF's previous bytes, a pruned document's copy
        t = time.perf_counter()
        self.store.save(coll)
        report.timings["index"] += time.perf_counter() - t
        report.timings["total"] = time.perf_counter() - t0
        return report

    @staticmethod
    def _discover(roots: list[Path], include: Sequence[str], exclude: Sequence[str], sources: dict[Path, str],
                  report: IngestReport) -> list[Found]:
        """The files to ingest; problems (unreadable, unsupported...) go straight into the report."""
        found: list[Found] = []
        for item in discover(roots, SUPPORTED_SUFFIXES, include=include, exclude=exclude):
            if isinstance(item, Problem):
                report.results.append(FileResult(item.path.name, str(item.path), item.kind, item.reason))
            else:
                if item.path in sources:
                    item = Found(item.path, item.root, sources[item.path])
                found.append(item)
        return found

    def delete_documents(self, collection: str, document_ids: Sequence[int]) -> int:
        with self.db.session() as s:
            coll = repo.require_collection(s, collection)
            repo.lock_collection(s, coll.id)
            docs = repo.documents_in(s, coll.id, document_ids)
            removed = repo.delete_documents(s, docs)
            s.flush()
            gen = repo.collection_generation(s, coll.id)
        self.store.apply(coll, int(gen or 0), remove_ids=removed)
        self.prune_originals()
        return len(docs)

    def _keep_original(self, path: Path, sha: str) -> str | None:
        """Keep a copy of a PDF for the evidence viewer; a failure (disk full) costs the page images only."""
        try:
            # Hard-link only an upload's temporary file (nobody rewrites it); a user's own file is copied.
            self.originals.put(path, sha, link=path.resolve().is_relative_to(self.uploads_dir))
            return None
        except OSError as e:
            return f"no copy kept for page images ({e.strerror or e}); its pages cannot be shown"

    def prune_originals(self) -> int:
        """Remove the kept PDF copies that no document refers to any more."""
        return prune_unreferenced(self.settings, self.db)

    # -- preparation (worker thread) -----------------------------------------------------------------------
    def _prepare_all(self, todo: list[Found], existing: dict[str, Document], meta: dict[str, Any],
                     password: str | None, chunk_limit: int) -> Generator[tuple[_Prepared, bool], None, None]:
        """Load+chunk files in a worker thread, ahead of the consumer by up to `chunk_limit` chunks (at least one
        file, at most `_AHEAD_MAX_FILES`): a group of small files (SciFact abstracts) is ready by the time the
        previous one is embedded, and a few big PDFs do not pile up in memory. Yields each prepared file with
        whether the next one was ready within `_AHEAD_WAIT_S` (False: the worker is still on it)."""
        if not todo:
            return
        results: queue.Queue[_Prepared | BaseException] = queue.Queue()
        room = threading.Condition()
        ahead = {"files": 0, "chunks": 0}
        stop = threading.Event()

        def produce() -> None:
            try:
                for f in todo:
                    with room:
                        while not stop.is_set() and ahead["files"] and (
                                ahead["chunks"] >= chunk_limit or ahead["files"] >= _AHEAD_MAX_FILES):
                            room.wait()
                    if stop.is_set():
                        return
                    prep = self._prepare(f, existing.get(f.source), meta, password)
                    with room:
                        ahead["files"] += 1
                        ahead["chunks"] += len(prep.specs)
                    results.put(prep)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
                results.put(e)

        def take(timeout: float | None = None) -> _Prepared:
            item = results.get(timeout=timeout)
            if isinstance(item, BaseException):
                raise item
            with room:
                ahead["files"] -= 1
                ahead["chunks"] -= len(item.specs)
                room.notify()
            return item

        worker = threading.Thread(target=produce, name="ctxqa-extract", daemon=True)
        worker.start()
        try:
            prep = take()
            for _ in range(len(todo) - 1):
                try:
                    nxt: _Prepared | None = take(timeout=_AHEAD_WAIT_S)
                except queue.Empty:
                    nxt = None
                yield prep, nxt is not None
                prep = nxt if nxt is not None else take()
            yield prep, True  # the last file counts as ready: its group is stored right away
        finally:
            stop.set()
            with room:
                room.notify_all()
            worker.join()

    def _prepare(self, f: Found, old: Document | None, meta: dict[str, Any], password: str | None) -> _Prepared:
        t = time.perf_counter()
        try:
            st = f.path.stat()
            sha = file_sha256(f.path)
        except OSError as e:
            err = LoadError(f.path, "unreadable", f"cannot read it ({e.strerror})")
            return _Prepared(f, "", 0, datetime.now(UTC), {}, error=err)
        prep = _Prepared(f, sha, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC), {})
        try:
            side = read_sidecar(f.path)
        except LoadError as e:
            prep.error = e
            return prep
        file_password = side.pop("password", None) or password
        prep.extra_meta = json_safe({**side, **meta})
        if old is not None and old.status == "ingested" and old.sha256 == sha and \
                (old.meta or {}).get("_added", {}) == prep.extra_meta and old.context_version == CONTEXT_VERSION:
            if old.media_type == PDF_TYPE:
                self._keep_original(f.path, sha)  # documents ingested before copies were kept get one now
            return prep  # unchanged: doc stays None (read again when the document-context rules changed)
        try:
            prep.doc = load(f.path, password=file_password)
        except LoadError as e:
            prep.error = e
            prep.t_extract = time.perf_counter() - t
            return prep
        except Exception as e:  # noqa: BLE001 - a loader bug must not abort the whole run
            prep.error = LoadError(f.path, "corrupt", f"unexpected {type(e).__name__} while loading: {e}",
                                   "please report this file; the run continued without it")
            prep.t_extract = time.perf_counter() - t
            return prep
        if prep.doc.media_type == PDF_TYPE:
            warning = self._keep_original(f.path, sha)
            if warning:
                prep.doc.warnings.append(warning)
        prep.context = document_context(prep.doc, f.source, prep.extra_meta, prep.mtime)
        prep.t_extract = time.perf_counter() - t
        t = time.perf_counter()
        try:
            prep.specs = chunk_document(prep.doc, self.tokenizer, self.chunk_size, self.chunk_overlap,
                                        max_tokens=self.embedder.max_tokens)
        except Exception as e:  # noqa: BLE001
            prep.error = LoadError(f.path, "corrupt", f"chunking failed: {type(e).__name__}: {e}",
                                   "please report this file; the run continued without it")
            prep.doc = None
        prep.t_chunk = time.perf_counter() - t
        if prep.doc is not None and not prep.specs:
            reason = "no extractable text"
            if prep.doc.empty_pages:
                reason += f" ({len(prep.doc.empty_pages)} pages without a text layer; scanned? OCR it first)"
            prep.error = LoadError(f.path, "empty", reason)
            prep.doc = None
        return prep

    # -- storing (main thread) -----------------------------------------------------------------------------
    def _doc_metadata(self, prep: _Prepared) -> dict[str, Any]:
        assert prep.doc is not None
        meta = dict(prep.doc.metadata)
        meta.update(prep.extra_meta)
        if not meta.get("date"):  # cited in BEGINCONTEXT and filtered on: the date found (ingest/doc_context.py)
            c = prep.context
            meta["date"] = (c.date if c is not None and c.date else prep.mtime.date()).isoformat()
        meta["_added"] = prep.extra_meta  # what the user added, to detect metadata-only changes
        if prep.doc.pages:  # where each page lies in the text: the evidence viewer maps spans to pages with it
            meta["_page_spans"] = [[p.start, p.end] for p in prep.doc.pages]
        if 0 < len(prep.doc.sections) <= MAX_SECTIONS_KEPT:  # the evidence viewer's headings above a span
            meta["_sections"] = [[s.start, s.end, list(s.headings)] for s in prep.doc.sections]
        return json_safe(meta)

    def _embed_group(self, group: list[tuple[_Prepared, Document | None]], report: IngestReport) -> _Plan:
        """Main thread: find the vectors a group can reuse, embed the rest."""
        # Reuse stored vectors for chunk texts embedded before (edits usually touch a few chunks).
        t = time.perf_counter()
        # Vectors are keyed by what was embedded (chunk text under its title and headings): an unchanged chunk
        # of a retitled document is embedded again, an unchanged one anywhere in the group is not.
        plan = _Plan()
        old_ids = [old.id for _, old in group if old is not None]
        if old_ids:
            with self.db.session() as s:
                # Stamps before rows: a write that lands between the two reads leaves a stamp older than the
                # rows, which the writer then treats as changed (safe), never the other way round.
                plan.stamps = repo.ingest_stamps(s, old_ids)
                # Each row with the header its document's chunks are indexed under now (one statement, one
                # snapshot): the key of a stored vector is what was embedded for it.
                for c, title in repo.chunks_with_headers(s, old_ids):
                    s.expunge(c)  # written back (merged) by the writer thread's own session
                    et = self._embedding_text(c.text, title, c.heading_path or (), c.token_count)
                    plan.reuse[et] = c.embedding
                    plan.old_etext[c.id] = et
                    plan.old_rows.setdefault(c.document_id, {})[c.ordinal] = c
        plan.etexts = {id(sp): self._embedding_text(sp.text, _header(prep), sp.heading_path, sp.token_count)
                       for prep, _ in group for sp in prep.specs}
        uniq = list(dict.fromkeys(et for et in plan.etexts.values() if et not in plan.reuse))
        report.timings["store"] += time.perf_counter() - t
        t = time.perf_counter()
        vecs = self.embedder.encode(uniq)
        report.timings["embed"] += time.perf_counter() - t
        report.chunks_embedded += len(uniq)
        plan.fresh = {txt: vecs[i].tobytes() for i, txt in enumerate(uniq)}
        return plan

    def _write_group(self, coll: Collection, group: list[tuple[_Prepared, Document | None]], plan: _Plan
                     ) -> _Written:
        """Writer thread: one transaction for the group's documents and chunks (bumping the collection
        generation), then the index. Groups are written one at a time, in order."""
        old_rows, old_etext, etexts, reuse, fresh = plan.old_rows, plan.old_etext, plan.etexts, plan.reuse, plan.fresh
        reused = 0
        t = time.perf_counter()
        results: list[FileResult] = []
        add_ids: list[int] = []
        add_vecs: list[bytes] = []
        remove_ids: list[int] = []
        relex_ids: list[int] = []  # kept chunks of a changed document: their lexical text (title, window) moved
        with self.db.session() as s:
            # One writer per collection across replicas until the commit; then decide from what is there now,
            # which another replica may have changed since this run read `existing` and the old rows.
            repo.lock_collection(s, coll.id)
            current = repo.documents_by_source(s, coll.id, [prep.found.source for prep, _ in group])
            docs: list[tuple[_Prepared, Document, Status]] = []
            stale: dict[int, list[int]] = {}  # documents changed by another writer: all their rows go
            for prep, _old in group:  # `old` was the reading at the start; `current` is the one that counts
                assert prep.doc is not None
                d = prep.doc
                doc = current.get(prep.found.source)
                if doc is not None and plan.stamps.get(doc.id) != doc.ingested_at:
                    if doc.status == "ingested" and doc.sha256 == prep.sha256 and \
                            (doc.meta or {}).get("_added", {}) == prep.extra_meta:
                        # The same file, ingested by another writer meanwhile: nothing to do.
                        results.append(FileResult(prep.found.source, str(prep.found.path), "unchanged",
                                                  document_id=doc.id))
                        continue
                    stale[doc.id] = repo.chunk_ids_of(s, [doc.id]).tolist()
                status: Status = "updated" if doc is not None and doc.status == "ingested" else "added"
                if doc is None:
                    doc = Document(collection_id=coll.id, source=prep.found.source)
                    s.add(doc)
                doc.path = str(prep.found.path)
                dc = prep.context
                assert dc is not None
                doc.title, doc.title_source, doc.period, doc.context = dc.title, dc.title_source, dc.period, dc.header
                doc.date = dc.date.isoformat() if dc.date else None
                doc.date_source, doc.context_version = dc.date_source, CONTEXT_VERSION
                doc.sha256 = prep.sha256
                doc.media_type = d.media_type
                doc.size = prep.size
                doc.page_count = d.page_count
                doc.empty_pages = len(d.empty_pages)
                doc.mtime = prep.mtime
                doc.meta = self._doc_metadata(prep)
                doc.chunk_count = len(prep.specs)
                repo.mark_ingested(doc)
                docs.append((prep, doc, status))
            s.flush()  # one flush for the group: new documents get their ids (batched INSERT ... RETURNING)
            new_rows: list[dict[str, Any]] = []
            for prep, doc, status in docs:
                assert prep.doc is not None
                d = prep.doc
                if doc.id in stale:
                    prev: dict[int, Chunk] = {}
                    remove_ids.extend(stale[doc.id])
                else:
                    prev = old_rows.get(doc.id, {})
                keep: dict[int, Chunk] = {}
                for sp in prep.specs:
                    c = prev.get(sp.ordinal)
                    if c is not None and c.text == sp.text and old_etext.get(c.id) == etexts[id(sp)]:
                        keep[sp.ordinal] = c
                remove_ids.extend(c.id for o, c in prev.items() if o not in keep)
                for sp in prep.specs:
                    fields: dict[str, Any] = dict(char_start=sp.char_start, char_end=sp.char_end, page_start=sp.page_start,
                                  page_end=sp.page_end, heading_path=list(sp.heading_path),
                                  token_count=sp.token_count, meta={})
                    if sp.ordinal in keep:  # same ordinal and text: keep the row, its id and its vector
                        reused += 1
                        row = s.merge(keep[sp.ordinal])
                        relex_ids.append(row.id)
                        for k, v in fields.items():
                            setattr(row, k, v)
                        continue
                    et = etexts[id(sp)]
                    if et in reuse:
                        reused += 1
                    new_rows.append(dict(document_id=doc.id, collection_id=coll.id, ordinal=sp.ordinal,
                                         text=sp.text, embedding=reuse.get(et) or fresh[et], **fields))
                results.append(FileResult(prep.found.source, str(prep.found.path), status, document_id=doc.id,
                                          pages=d.page_count or 0, chunks=len(prep.specs),
                                          empty_pages=len(d.empty_pages),
                                          reason=(f"{len(d.empty_pages)} page(s) without text"
                                                  if d.empty_pages else None)))
            # Replaced chunks go before their successors arrive (same document and ordinal: a unique key).
            repo.delete_chunks(s, remove_ids)
            if new_rows:
                add_ids.extend(repo.insert_chunks(s, new_rows))
                add_vecs.extend(r["embedding"] for r in new_rows)
            repo.bump_generation(s, coll.id)
            s.flush()
            gen = repo.collection_generation(s, coll.id) or 0
        t_store = time.perf_counter() - t
        t = time.perf_counter()
        vec_arr = (np.frombuffer(b"".join(add_vecs), dtype=np.float32).reshape(len(add_vecs), -1)
                   if add_vecs else None)
        self.store.apply(coll, gen, add_ids=np.asarray(add_ids, dtype=np.int64), add_vecs=vec_arr,
                         remove_ids=remove_ids, relex_ids=relex_ids, save=False)
        return _Written(results, reused, t_store, time.perf_counter() - t)

    def _embedding_text(self, text: str, title: str | None, headings: Sequence[str], tokens: int | None) -> str:
        return embedding_text(text, title, headings, count_tokens=self.embedder.count_tokens,
                              max_tokens=self.embedder.max_tokens, text_tokens=tokens)

    def _record_failure(self, coll: Collection, prep: _Prepared, old: Document | None, res: FileResult) -> None:
        """A new file that fails gets a 'failed' row (visible in `docs list`); an ingested one keeps its last
        good version searchable: losing data because a new version is unreadable helps no one."""
        if old is not None and old.status == "ingested":
            res.document_id = old.id
            res.reason = f"{res.reason} (kept the previously ingested version)"
            return
        if res.status != "failed":
            return
        with self.db.session() as s:
            repo.lock_collection(s, coll.id)
            doc = repo.documents_by_source(s, coll.id, [prep.found.source]).get(prep.found.source)
            if doc is not None and doc.status == "ingested":  # another writer ingested a good version meanwhile
                res.document_id = doc.id
                res.reason = f"{res.reason} (kept the version ingested meanwhile)"
                return
            if doc is None:
                doc = Document(collection_id=coll.id, source=prep.found.source, sha256=prep.sha256 or "",
                               media_type="application/octet-stream", size=prep.size, meta={}, chunk_count=0)
                s.add(doc)
            doc.path = str(prep.found.path)
            doc.title = Path(prep.found.source).name
            doc.sha256 = prep.sha256 or ""
            doc.size = prep.size
            doc.status = "failed"
            doc.error = res.reason
            s.flush()
            res.document_id = doc.id

    def _prune(self, coll: Collection, roots: list[Path], seen: set[str], existing: dict[str, Document]
               ) -> list[FileResult]:
        resolved = [r.resolve() for r in roots if r.exists() and r.is_dir()]
        gone = []
        for source, doc in existing.items():
            if source in seen or not doc.path:
                continue
            p = Path(doc.path)
            # Only files that are gone: a file merely filtered out by --include/--exclude is not pruned.
            if any(r in p.parents for r in resolved) and not p.exists():
                gone.append(doc)
        if not gone:
            return []
        with self.db.session() as s:
            repo.lock_collection(s, coll.id)
            docs = repo.documents_in(s, coll.id, [d.id for d in gone])
            removed = repo.delete_documents(s, docs)
            s.flush()
            gen = repo.collection_generation(s, coll.id) or 0
        self.store.apply(coll, gen, remove_ids=removed, save=False)
        return [FileResult(d.source, d.path or "", "removed", "file no longer exists", d.id) for d in gone]
