"""Prefect flows: thin orchestration over the library (the dataset build and training).

The flows arrive with the build-dataset and training issues; they call the same entry points
as the DVC stages and the ``uir`` CLI.
"""
