"""Pieces shared by both kinds: the model base, names, Kubernetes-shaped conditions and references."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "vemigrate.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# DNS-1123 subdomain: what Kubernetes accepts as an object name, so a reference that breaks it is
# refused by the API server instead of failing a lookup later.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ObjectName = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN),
]


class Model(BaseModel):
    """Base of every API object: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_enum_values=False,
        extra="ignore",
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready form that goes to the API server: camelCase, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Model):
    """A metav1.Condition: one aspect of the object's state, with when it last flipped."""

    type: str = Field(description="Kind of condition, in CamelCase (for example Succeeded).", max_length=316)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        description="One CamelCase word a program can match on (for example InsufficientDisk).",
        max_length=1024,
    )
    message: str = Field(default="", description="What happened, for a person.", max_length=32768)
    last_transition_time: datetime = Field(
        description="When status last changed from one value to another (not when it was last checked)."
    )
    observed_generation: int | None = Field(
        default=None,
        description="metadata.generation of the object that this condition was computed from.",
        ge=0,
    )


class SecretKeyRef(Model):
    """A key of a Secret in the object's own namespace."""

    name: ObjectName = Field(description="Name of the Secret, in the same namespace.")
    key: str | None = Field(
        default=None,
        description="Key inside the Secret; when unset, the kind's documented default key is used.",
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
    )
