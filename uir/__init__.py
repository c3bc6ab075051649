"""Shared command line, image I/O and demo data for UIR Forge."""
