"""lookalike.search: asking questions of an index: engine, reports, HTTP API, CLI and web page."""
