"""A query's commit records on a results root: a marker per batch, and a roll-up that readers open instead of each.

Every committed batch has its marker `_commits/<query>/<tag>.json` holding its record (streaming.commit). A job
that follows a producer for days commits thousands of batches, and opening each marker (5 ms through the JVM,
9 ms over WebHDFS) made a restart, `verify` and the notebook slower with every hour of history. So every
ROLLUP_EVERY batches the job also writes `<tag>.rollup`: the records of every marker up to that tag, in one
file. A reader lists the folder once, takes the newest roll-up that covers exactly the markers listed up to its
tag, and opens only the markers after it. The markers stay: they alone say which files are committed, and a
roll-up that does not match them (a marker removed by hand, a file cut short) is not used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from logpipe.root_layout import ROLLUP, marker_tag

log = logging.getLogger(__name__)

ROLLUP_EVERY = 100  # the job writes a roll-up after each batch whose id + 1 is a multiple of this
ROLLUPS_KEPT = 2  # the newest ones: a reader that listed the folder just before a new one can still open its own


def rollup_text(records: Mapping[str, dict[str, Any]]) -> str:
    """The text of a roll-up of `records` (tag -> the record its marker holds)."""
    tags = sorted(records)
    return json.dumps({"tags": tags, "records": [records[t] for t in tags]}, default=str)


def read_commit_records(names: Iterable[str], read: Callable[[str], str | bytes]) -> list[tuple[str, dict[str, Any]]]:
    """(tag, record) of every commit marker among `names` (a listing of one query's folder), in tag order. The
    records come from the newest roll-up that covers exactly the markers listed up to its tag, and from the
    markers after it, each opened with `read`; without a roll-up that fits, from every marker."""
    names = list(names)
    markers = {tag: name for name in names if (tag := marker_tag(name)) is not None}
    rollups = sorted(((tag, name) for name in names if (tag := marker_tag(name, ROLLUP)) is not None), reverse=True)
    known: dict[str, dict[str, Any]] = {}
    for tag, name in rollups:
        try:
            data = json.loads(read(name))
            records = dict(zip(data["tags"], data["records"], strict=True))
        except (OSError, ValueError, KeyError, TypeError) as exc:  # gone since the listing, cut short, not ours
            log.warning("commit records: roll-up %s cannot be read (%s); the markers are read instead", name, exc)
            continue
        covered = {t for t in markers if t <= tag}
        if set(records) == covered:
            known = records
            break
        log.warning("commit records: roll-up %s holds %d records where %d markers are listed up to it (%s); the "
                    "markers are read instead", name, len(records), len(covered),
                    ", ".join(sorted(set(records) ^ covered)[:5]))
    return [(tag, known[tag] if tag in known else json.loads(read(markers[tag]))) for tag in sorted(markers)]


def stale_rollups(names: Iterable[str], keep: int = ROLLUPS_KEPT) -> list[str]:
    """The roll-ups among `names` older than the newest `keep` (a new one holds all they hold)."""
    rollups = sorted((tag, name) for name in names if (tag := marker_tag(name, ROLLUP)) is not None)
    return [name for _, name in rollups[:-keep]] if keep else [name for _, name in rollups]
