"""A stand-in for the prefect package: only its engine module, see engine.py."""
