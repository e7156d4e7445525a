"""ve-migrate: a Kubernetes operator that migrates virtual environments between hypervisor hosts."""

__version__ = "0.1.0"
