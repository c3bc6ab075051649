"""Dataset building: pure library code, no Prefect or DVC."""
