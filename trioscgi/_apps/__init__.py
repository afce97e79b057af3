"""Where the application runs: inline on trio, in a hosted asyncio loop, or as WSGI in a
thread pool (docs/architecture.md)."""
