"""What a results root records about the settings its results were made with (`_commits/job.json`), and compares."""

from __future__ import annotations

from typing import Any

from logpipe.root_layout import COMMITS

# what the results on a root depend on, besides the input: a run with other values on the same root would mix
# window sizes, move the late horizon backwards and write windows again that were already final, or decide the
# alerts of one root by two sets of rules (verify and the notebook read them from here), or publish them to two
# topics (a batch committed before a crash and sent at the restart would go to the new one)
ROOT_SETTINGS = ("topic", "window", "slide", "watermark", "rate_limit_ceiling", "surge_min_count", "surge_min_share",
                 "surge_top_hosts", "alerts_topic")
# the ones readers (verify, the notebook) take from the record: how the numbers were made
RUN_SETTINGS = tuple(k for k in ROOT_SETTINGS if k != "topic")
DURATION_SETTINGS = ("window", "slide", "watermark")
ROOT_SETTINGS_FILE = f"{COMMITS}/job.json"


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


def parse_root_record(path: str, text: str) -> dict:
    """The settings record at `path` (its text): ValueError saying what to do if it is not the JSON object the job
    writes."""
    import json

    try:
        record = json.loads(text)
        if not isinstance(record, dict):
            raise ValueError(f"a JSON {type(record).__name__}, not an object")
    except ValueError as exc:
        raise ValueError(f"{path} is not the JSON the job writes ({exc}): it records the settings the results on "
                         "this root were made with; restore it or use another LOGPIPE_HDFS_ROOT") from exc
    return record


def claim_refusal(root: str, theirs: dict, mine: dict, *, committed: int, offsets: str, has_offsets: bool,
                  topic: str, topic_id: str | None) -> str | None:
    """Why a run with settings `mine` must not add to a results root, or None: the root's record (`theirs`) holds
    other ROOT_SETTINGS; or its `committed` micro-batches lost their Spark checkpoint (`offsets`: the batch ids
    would start again at 0, and the new batches, which read other records, be skipped as committed); or the
    checkpoint holds offsets of another topic of the same name (`topic_id`, the broker's id of the topic now: it
    was deleted and made again)."""
    # a setting missing was recorded by an earlier version, which kept fewer: taken as it is
    diff = [f"{k} {theirs[k]!r} there, {mine[k]!r} now" for k in ROOT_SETTINGS
            if k in theirs and setting_differs(k, theirs[k], mine[k])]
    if diff:
        return (f"{root} holds results made with other settings ({'; '.join(diff)}): adding to them would mix the "
                "two. Run with the same settings, or give another LOGPIPE_HDFS_ROOT (--hdfs-root); a new root reads "
                "the topic again from its start")
    if committed and not has_offsets:
        return (f"{root} holds {committed} committed micro-batches, but their Spark checkpoint ({offsets}) is gone: "
                "the batch ids would start again at 0 and new records be skipped as already committed. Give another "
                "LOGPIPE_HDFS_ROOT (--hdfs-root), or delete the whole root to start over")
    was = theirs.get("topic_id")
    if topic_id and was and was != topic_id and (committed or has_offsets):
        return (f"the topic {topic} was deleted and made again since the results under {root} were made (its id was "
                f"{was}, it is {topic_id} now): the job's checkpoint holds offsets of the old topic, and the new "
                "one's records from offset 0 would be skipped up to them, without a word. Give another "
                "LOGPIPE_HDFS_ROOT (--hdfs-root) to read the new topic from its start, or delete this root to start "
                "over")
    return None
