"""UIR Forge degradation engine: paired-data synthesis whose every sample can be replayed.

Public API: ``synthesize``, ``replay``, ``parse_prompt``, ``render_prompt``, ``derive_seed``
and the registries (``PIPELINES``, ``DEGRADATIONS``, ``OPS``).
"""

from degradations import pipelines, primitives, types  # noqa: F401  (registers built-ins)
from degradations.engine import (
    RECORD_FORMAT,
    Record,
    Sample,
    execute,
    replay,
    replay_sample,
    sizes_scene_geometry,
    synthesize,
    synthesize_sample,
)
from degradations.plugins import load_installed as _load_installed_plugins
from degradations.prompt import (
    Clause,
    PromptError,
    RestorationPrompt,
)
from degradations.prompt import (
    parse as parse_prompt,
)
from degradations.prompt import (
    render as render_prompt,
)
from degradations.registry import (
    DEGRADATIONS,
    OPS,
    PIPELINES,
    NumericParam,
    register_degradation,
    register_op,
    register_pipeline,
)
from degradations.seeding import derive_seed

__all__ = [
    "DEGRADATIONS",
    "OPS",
    "PIPELINES",
    "RECORD_FORMAT",
    "Clause",
    "NumericParam",
    "PromptError",
    "Record",
    "RestorationPrompt",
    "Sample",
    "derive_seed",
    "execute",
    "parse_prompt",
    "register_degradation",
    "register_op",
    "register_pipeline",
    "render_prompt",
    "replay",
    "replay_sample",
    "sizes_scene_geometry",
    "synthesize",
    "synthesize_sample",
]

_load_installed_plugins()
