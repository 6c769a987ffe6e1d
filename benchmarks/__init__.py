"""flowagent's benchmark harness: ``python -m benchmarks [--quick] [--only NAME ...]``.

Starts everything it measures as real processes (our server, agents, flows; a Prefect server and
Prefect's own worker for the side-by-side section), prints a table of figures next to their
targets, and writes ``benchmarks/results/<timestamp>.json`` plus ``latest.json``.
See docs/PERFORMANCE.md.
"""
