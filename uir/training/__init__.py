"""Downstream training from a built dataset: the DA-CLIP controller, the restorers that use
its embeddings, and their evaluation, per the ``training:`` profile of params.yaml (``config``,
``job``), as steps (``steps``, ``evaluate``) launched in-process or under torchrun (``launch``).
Library code; the ``uir train`` CLI, the DVC stages and the Prefect flows call it."""
