"""An out-of-tree degradation type: posterisation (too few grey levels per channel).

Importing this module registers it; the entry point in pyproject.toml makes UIR Forge import
it automatically once the package is installed.
"""

import numpy as np

from degradations import NumericParam, register_degradation


@register_degradation(
    "posterized",
    params=(NumericParam("levels", 2, 16, 0, minimum=2, maximum=256),),
    verb="Deposterize",
    template="Deposterize with levels {levels}",
    order=45,
)
def posterized(image: np.ndarray, levels: int) -> np.ndarray:
    """Quantise each channel to a few levels, as in banding from aggressive bit-depth cuts."""
    steps = np.float32(levels - 1)
    return np.round(image * steps) / steps
