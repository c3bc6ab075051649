"""Models trained from the dataset shards: the DA-CLIP controller, restorers, the quality
perceiver. Built through a factory from declarative configs (arrives with the training issues).
"""
