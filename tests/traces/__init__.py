"""Tests of the exit-trace package: format, synthetic generator, registry, hostile files."""
