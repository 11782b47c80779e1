"""python_service: tails an access log into Kafka, one record per line, keyed by its source position."""
