"""The pipeline-health page: each stage reports its status; latency per hop from the records' timestamps."""
