"""The alerts scored against the ground truth `logpipe generate` wrote beside the log."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from logpipe.verify.tables import _epoch_s


class TruthFileError(ValueError):
    """The ground-truth file is not the one `logpipe generate` writes (the message says what is wrong)."""


def load_truth(path: Path) -> dict[str, Any]:
    """The ground truth `logpipe generate` wrote beside a log, checked for what scoring reads (each incident's id,
    kind, start, end and expected alerts' rule and key): read before the recount, so a broken file is said at
    once, not after the minutes a large log takes."""
    try:
        truth = json.loads(path.read_text())
        if not isinstance(truth, dict) or not isinstance(truth.get("incidents", []), list):
            raise ValueError("not a JSON object with a list of incidents")
        for inc in truth.get("incidents", []):
            datetime.fromisoformat(str(inc["start"]).replace("Z", "+00:00"))
            datetime.fromisoformat(str(inc["end"]).replace("Z", "+00:00"))
            inc["id"], inc["kind"]  # noqa: B018 - present, as the report names them
            for e in inc.get("expected_alerts", []):
                e["rule"], e["key"]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TruthFileError(f"{path} is not a ground-truth file of `logpipe generate` ({type(exc).__name__}: "
                             f"{exc}): give the right one with --truth, or move it away to verify without "
                             "scoring alerts against it") from exc
    return truth


def score_against_truth(alerts: pd.DataFrame, truth: dict[str, Any], size_s: int,
                        read_until_of: dict[int, int] | None = None) -> dict[str, Any]:
    """Recall over the incidents' expected alerts, precision over raised alerts, and two detection delays in log
    time from the incident's start: `delay_s` to the end of the first window alerted (how soon the windows allow),
    and `raised_after_s` to the newest event time the job had read when it raised its first alert (its batch's,
    `read_until_of` by batch id; a job that raised its alerts only at the end shows there)."""

    def ts(iso: str) -> int:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())

    a = alerts.assign(ws=_epoch_s(alerts.window_start)) if len(alerts) else pd.DataFrame(
        columns=["rule", "key", "ws"])
    matched_alerts: set[int] = set()
    incidents = []
    found = wanted = 0
    for inc in truth.get("incidents", []):
        start, end = ts(inc["start"]), ts(inc["end"])
        rows = []
        for e in inc.get("expected_alerts", []):
            wanted += 1
            hit = a[(a.rule == e["rule"]) & (a.key == e["key"]) & (a.ws < end) & (a.ws + size_s > start)]
            matched_alerts.update(hit.index.tolist())
            raised_after = None
            if len(hit):
                found += 1
                delay = int(hit.ws.min()) + size_s - start
                if read_until_of is not None and "batch" in hit:
                    seen = [read_until_of[b] for b in hit.batch if b in read_until_of]
                    raised_after = min(seen) - start if seen else None
            else:
                delay = None
            rows.append({**e, "detected": bool(len(hit)), "alerts": int(len(hit)), "delay_s": delay,
                         "raised_after_s": raised_after})
        incidents.append({"id": inc["id"], "kind": inc["kind"], "start": inc["start"], "end": inc["end"],
                          "expected": rows})
    false_pos = a.drop(index=list(matched_alerts))
    return {"recall": found / wanted if wanted else 1.0,
            "precision": (len(a) - len(false_pos)) / len(a) if len(a) else 1.0,
            "expected_alerts": wanted, "detected": found, "false_positives": int(len(false_pos)),
            "false_positive_examples": json.loads(false_pos.head(10).to_json(orient="records", date_format="iso")),
            "incidents": incidents}


def truth_settings_hint(truth: dict[str, Any], s: Any, truth_path: Path) -> str | None:
    """What to check when the ground truth was generated for other alert rules or another window than the results
    were made with (`s`): its incidents were planned to meet those, and the background to stay under them."""
    from logpipe.windows import duration_seconds

    args = truth.get("args")
    if not isinstance(args, dict):
        return None
    mine = {"rate_limit_ceiling": s.rate_limit_ceiling, "surge_min_count": s.surge_min_count,
            "surge_min_share": s.surge_min_share, "window_s": duration_seconds(s.window)}
    differ = [f"{k} {args[k]} (the results': {v})" for k, v in mine.items() if args.get(k) not in (None, v)]
    if not differ:
        return None
    return (f"{truth_path} was generated for {', '.join(differ)}: its expected alerts are for those rules, so the "
            "score above may count alerts these rules raise or do not as misses or false alerts; generate the log "
            "with the job's settings, or --lenient-truth not to fail on it")


def truth_log_hint(truth: dict[str, Any], file_lines: int, truth_path: Path, log_path: Path) -> str | None:
    """What to check when the ground truth describes another log than `log_path` (its line count differs): its
    incidents are another log's, and recall and precision against them say nothing about this run."""
    described = truth.get("total_lines")
    if not isinstance(described, int) or described == file_lines:
        return None
    return (f"{truth_path} describes a log of {described:,} lines, {log_path} has {file_lines:,}: it is the truth "
            "of another log (or of this one before it changed), so the score above is against incidents this log "
            "may not hold; give the log's own with --truth, or --lenient-truth not to fail on it")
