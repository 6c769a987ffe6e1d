"""Work-queue API clients. These are the only modules that import httpx."""
