"""Runnable experiments, one file per experiment: ``python -m experiments.<name> --help``."""
