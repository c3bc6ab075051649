"""Perceive-IR quality labelling of a built dataset: proxy restorers, medium images, a
prompt-learned perceiver, labelled shards and curation. Library code; flows and DVC call it."""
