"""What a results root records about the settings its results were made with (`_commits/job.json`), and compares."""

from __future__ import annotations

from typing import Any

# what the results on a root depend on, besides the input: a run with other values on the same root would mix
# window sizes, move the late horizon backwards and write windows again that were already final, or decide the
# alerts of one root by two sets of rules (verify and the notebook read them from here)
ROOT_SETTINGS = ("topic", "window", "slide", "watermark", "rate_limit_ceiling", "surge_min_count", "surge_min_share",
                 "surge_top_hosts")
# the ones readers (verify, the notebook) take from the record: how the numbers were made
RUN_SETTINGS = tuple(k for k in ROOT_SETTINGS if k != "topic")
DURATION_SETTINGS = ("window", "slide", "watermark")
ROOT_SETTINGS_FILE = "_commits/job.json"


def setting_differs(name: str, recorded: Any, current: Any) -> bool:
    """Whether a recorded setting differs from the current value: durations compared as lengths ("60 seconds" is
    "1 minute"); a recorded duration that is no duration differs."""
    from logpipe.windows import duration_seconds

    if name in DURATION_SETTINGS:
        try:
            return duration_seconds(str(recorded)) != duration_seconds(str(current))
        except ValueError:
            return True
    return recorded != current
