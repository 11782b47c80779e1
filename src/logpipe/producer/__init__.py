"""python_service: tails an access log into Kafka, one record per line, with its source position in headers."""
