"""Kubernetes API access: reading hosts and Secrets, writing status and Events."""
