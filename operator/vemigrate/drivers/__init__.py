"""Hypervisor drivers behind one protocol: libvirt (libvirt-python, virsh) and prlctl (Virtuozzo)."""
