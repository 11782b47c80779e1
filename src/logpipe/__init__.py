"""logpipe: streaming access-log analytics (Kafka -> Spark Structured Streaming -> Parquet on HDFS)."""

__version__ = "0.1.0"
