"""One module per scenario; each fills the sections named in :data:`benchmarks.cli.SCENARIOS`."""
