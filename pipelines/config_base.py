"""The base every recipe section's config model derives from.

Unknown keys are errors (`extra="forbid"`), and each field's docstring (written under the field, as
litgpt's configs do) becomes its description, so `raylm keys` and error messages can show it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class SectionConfig(BaseModel):
    """A typed recipe section. Subclass it and document every field with a docstring below it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)
