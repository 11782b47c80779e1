"""The native stack: real Kafka and HDFS as local JVM processes, jars from Maven Central."""
