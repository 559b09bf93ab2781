"""The typed settings framework, under the name methods registered through entry points import it by.

It lives in :mod:`storycast.settings` (masks, adapters, data building and training use it too); this module
re-exports its public names, so ``from storycast.methods.settings import MethodSettings, setting`` keeps working
for third-party methods. storycast's own code imports :mod:`storycast.settings`.
"""

from storycast.settings import (
    MISSING,
    Leaf,
    MethodSettings,
    ResolveContext,
    check_range,
    convert_value,
    describe_type,
    setting,
)

__all__ = [
    "MISSING",
    "Leaf",
    "MethodSettings",
    "ResolveContext",
    "check_range",
    "convert_value",
    "describe_type",
    "setting",
]
