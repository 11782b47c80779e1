"""A query's commit records on a results root: a marker per batch, and roll-ups that readers open instead of each.

Every committed batch has its marker `_commits/<query>/<folder>/<tag>.json` holding its record (streaming.commit;
`<folder>` holds 10,000 batches: root_layout.marker_folder). A job that follows a producer for days commits
thousands of batches, and opening each marker (5 ms through the JVM, 9 ms over WebHDFS) made a restart, `verify` and
the notebook slower with every hour of history. So every ROLLUP_EVERY batches the job also writes
`<folder>/<tag>.rollup`: the records of every marker of that folder up to that tag, in one file. A roll-up holds one
folder's records, at most 10,000 (~3.5 MB), so its write costs the same after a week as after an hour (one of
every batch so far grew by ~11 MB a day at the default trigger, ~350 B a record, and was rewritten every
ROLLUP_EVERY batches). A reader lists the markers once, takes for each folder the newest roll-up that covers exactly the markers
listed in it up to its tag, and opens only the markers no roll-up covers. The markers stay: they alone say which
files are committed, and a roll-up that does not match them (a marker removed by hand, a file cut short) is not
used. Roots of earlier logpipe versions hold markers and roll-ups in the query's folder itself, each roll-up of
every batch up to its tag: read the same way, for the batches no folder's roll-up covers, until the job's next
start replaces those roll-ups with one per marker folder (streaming.commit.fold_in_flat_rollups).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from logpipe.root_layout import ROLLUP, containing_marker_folder, marker_folder, marker_tag

log = logging.getLogger(__name__)

ROLLUP_EVERY = 100  # the job writes a roll-up after each batch whose id + 1 is a multiple of this
ROLLUPS_KEPT = 2  # the newest ones: a reader that listed the folder just before a new one can still open its own


def rollup_text(records: Mapping[str, dict[str, Any]]) -> str:
    """The text of a roll-up of `records` (tag -> the record its marker holds)."""
    tags = sorted(records)
    return json.dumps({"tags": tags, "records": [records[t] for t in tags]}, default=str)


def rollup_scope(path: str) -> str | None:
    """The marker folder whose batches a roll-up at `path` covers (up to its tag): the folder it lies in; None for
    one in the query's folder itself (earlier logpipe versions), which covers every batch up to its tag."""
    return containing_marker_folder(path)


def read_commit_records(names: Iterable[str], read: Callable[[str], str | bytes]) -> list[tuple[str, dict[str, Any]]]:
    """(tag, record) of every commit marker among `names` (list_markers' listing of one query), in tag order. The
    records come from the roll-ups that cover exactly the markers listed in their scope (rollup_scope) up to their
    tag, the newest first (the folders' own before any in the query's folder), and from the markers no such roll-up
    covers, each opened with `read`. A roll-up whose markers the ones opened before covered already is not
    opened."""
    names = list(names)
    markers = {tag: name for name in names if (tag := marker_tag(name)) is not None}
    rollups = sorted(((tag, name) for name in names if (tag := marker_tag(name, ROLLUP)) is not None), reverse=True)
    # the folders' own roll-ups first: one an earlier logpipe wrote in the query's folder holds every batch up to
    # its tag (~79 MB after a week), opened only for batches no folder's roll-up covers
    rollups.sort(key=lambda r: rollup_scope(r[1]) is None)
    in_folder: dict[str, list[str]] = {}  # a folder's markers: a roll-up's are found without a scan of every one
    for tag in markers:
        in_folder.setdefault(marker_folder(tag), []).append(tag)
    known: dict[str, dict[str, Any]] = {}
    for tag, name in rollups:
        scope = rollup_scope(name)
        covered = {t for t in (markers if scope is None else in_folder.get(scope, ())) if t <= tag}
        if covered <= known.keys():
            continue
        try:
            data = json.loads(read(name))
            records = dict(zip(data["tags"], data["records"], strict=True))
        except (OSError, ValueError, KeyError, TypeError) as exc:  # gone since the listing, cut short, not ours
            log.warning("commit records: roll-up %s cannot be read (%s); the markers are read instead", name, exc)
            continue
        if set(records) == covered:
            known.update((t, r) for t, r in records.items() if t not in known)
            continue
        log.warning("commit records: roll-up %s holds %d records where %d markers are listed up to it (%s); the "
                    "markers are read instead", name, len(records), len(covered),
                    ", ".join(sorted(set(records) ^ covered)[:5]))
    return [(tag, known[tag] if tag in known else json.loads(read(markers[tag]))) for tag in sorted(markers)]


def read_commit_records_by_folder(names: Iterable[str], read: Callable[[str], str | bytes]
                                  ) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """read_commit_records' records one marker folder at a time, in tag order, so that a reader that keeps only
    some (the job: StreamJob._committed) never holds a long history's records at once. A marker an earlier logpipe
    wrote in the query's folder itself is read with its batch's folder; a root with a roll-up there (of every
    batch up to its tag: streaming.commit.fold_in_flat_rollups replaces them) is read in one go."""
    names = list(names)
    by_folder: dict[str, list[str]] = {}
    for name in names:
        if (tag := marker_tag(name)) is not None:
            by_folder.setdefault(marker_folder(tag), []).append(name)
        elif marker_tag(name, ROLLUP) is not None:
            if (scope := rollup_scope(name)) is None:
                yield read_commit_records(names, read)
                return
            by_folder.setdefault(scope, []).append(name)
    for folder in sorted(by_folder):
        yield read_commit_records(by_folder[folder], read)


def stale_rollups(names: Iterable[str], keep: int = ROLLUPS_KEPT) -> list[str]:
    """The roll-ups among `names` older than the newest `keep` of the same scope (rollup_scope: a newer one of a
    folder holds all that folder's older ones hold)."""
    by_scope: dict[str | None, list[tuple[str, str]]] = {}
    for name in names:
        if (tag := marker_tag(name, ROLLUP)) is not None:
            by_scope.setdefault(rollup_scope(name), []).append((tag, name))
    stale = [name for rollups in by_scope.values() for _, name in sorted(rollups)[:max(0, len(rollups) - keep)]]
    return sorted(stale, key=lambda n: marker_tag(n, ROLLUP) or "")
