"""Timing and (with the export issue) the device harness: latency, throughput and memory."""
