"""The API: pydantic models of the custom resources, which generate crds/."""
