"""Local environment: the real control plane and lab hosts for tests and the demo. Never imported by the operator."""
