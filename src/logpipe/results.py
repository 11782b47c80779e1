"""Reads the job's results (Parquet on HDFS) into pandas over WebHDFS, for the demo, notebook and benchmarks."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlparse

from logpipe.config import Settings

if TYPE_CHECKING:
    import fsspec
    import pandas as pd
    import pyarrow as pa

# result tables under settings.hdfs_root
TABLES = ("events", "quarantine", "late", "alerts", "windows/by_host", "windows/by_status")


def webhdfs_fs(s: Settings) -> "fsspec.AbstractFileSystem":
    """An fsspec WebHDFS filesystem for the NameNode in the settings (DataNode redirects go to loopback)."""
    import fsspec

    url = urlparse(s.webhdfs_address)
    return fsspec.filesystem("webhdfs", host=url.hostname, port=url.port or 9870, user=s.hdfs_user_name,
                             use_https=url.scheme == "https")


def load_arrow(s: Settings, table: str, columns: list[str] | None = None, *,
               fs: "fsspec.AbstractFileSystem | None" = None) -> "pa.Table | None":
    """One result table as an Arrow table (None if the folder does not exist or holds no data).

    Hive partitions (e.g. events/date=2004-05-18/) become columns; Spark's _SUCCESS/_temporary files are ignored.
    """
    import pyarrow.dataset as ds

    fs = fs or webhdfs_fs(s)
    path = s.hdfs_path(table)
    if not fs.exists(path):
        return None
    files = [f for f in fs.find(path) if f.endswith(".parquet") and "/_" not in f and "/." not in f]
    if not files:
        return None
    dataset = ds.dataset(files, filesystem=fs, format="parquet", partitioning="hive", partition_base_dir=path)
    return dataset.to_table(columns=columns)


def load_table(s: Settings, table: str, columns: list[str] | None = None, *,
               fs: "fsspec.AbstractFileSystem | None" = None) -> "pd.DataFrame":
    """One result table as a pandas DataFrame (an empty frame with `columns` if there is no data)."""
    import pandas as pd

    t = load_arrow(s, table, columns, fs=fs)
    return pd.DataFrame(columns=columns or []) if t is None else t.to_pandas()
