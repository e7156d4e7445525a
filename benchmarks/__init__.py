"""Benchmarks of ve-migrate on this machine: `make bench` (or `python -m benchmarks`).

Each figure is measured in the same run as its baseline and reported as a ratio or a median of
several runs; the table goes to the terminal and into docs/performance.md. Nothing here asserts a
timing. The runner uses the real parts (lab hypervisor hosts, kube-apiserver and etcd, the operator
as its own process); the one stand-in, for the 1,000-object control-plane run, is named
`SimulatedHost` (vemigrate/drivers/simulated.py, run by benchmarks/simulated.py) and says so in every row
it produces.
"""
