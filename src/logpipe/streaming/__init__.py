"""The streaming job: parse expressions, micro-batch logic, commits, lease and the run loop."""
