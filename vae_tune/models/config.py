"""Typed model configs: each architecture's knobs, their types and ranges, in one place.

A config is a pydantic model, so a bad value (`hidden_dim: -32`, `latent_dim: 0`,
`cell: "abc"`) is refused with the field's name before any tensor is built, and the tuner
derives which knobs are searchable, and their checks, from the same fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelConfig(BaseModel):
    """Knobs every architecture has; subclasses add their own."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    latent_dim: int = Field(16, ge=1, description="size of z")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout probability in the networks")
    flow: Literal["none", "planar", "iaf"] = Field(
        "none", description="posterior flow on q(z|x): planar (Rezende 2015), iaf (Kingma 2016)"
    )
    flow_length: int = Field(2, ge=0, le=64, description="flow steps K (0: no flow)")
    conditional: bool = Field(
        False, description="condition q(z|x, y) and p(x|z, y) on the class label (labelled data)"
    )
