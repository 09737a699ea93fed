"""The data plane: every query's path from bytes in to answer out (wire, cache, upstream, transports, pipeline)."""
