"""Lab hosts are separate hypervisors: own libvirtd (UUID, hostname), own sshd with a verified key."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET

import libvirt
import pytest

from vemigrate.cli import main
from vemigrate_dev.lab import LabInfo


def _ssh(info: LabInfo, address: str, command: str, known_hosts: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(info.ssh_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            f"root@{address}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_each_host_is_its_own_hypervisor(lab: LabInfo) -> None:
    uuids, hostnames = set(), set()
    for h in lab.hosts:
        conn = libvirt.open(h.uri)
        try:
            caps = ET.fromstring(conn.getCapabilities())
            uuids.add(caps.findtext("host/uuid"))
            hostnames.add(conn.getHostname())
            assert conn.storagePoolLookupByName("default").isActive()
            assert conn.listAllNetworks() == []  # no default network, no dnsmasq
        finally:
            conn.close()
    assert len(uuids) == len(lab.hosts)
    assert hostnames == {h.name for h in lab.hosts}


def test_sshd_accepts_the_lab_key_and_its_host_key_is_verified(lab: LabInfo, tmp_path: object) -> None:
    for h in lab.hosts:
        ok = _ssh(lab, h.address, "hostname", str(lab.known_hosts))
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip() == h.name
    # A known_hosts that names lab1's address with lab2's key must be refused: no blind trust.
    lines = lab.known_hosts.read_text().splitlines()
    swapped = lab.hosts[0].address + " " + lines[1].split(" ", 1)[1]
    bad = lab.known_hosts.with_name("known_hosts.test-swapped")
    bad.write_text(swapped + "\n")
    try:
        refused = _ssh(lab, lab.hosts[0].address, "true", str(bad))
    finally:
        bad.unlink()
    assert refused.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in refused.stderr or "verification failed" in refused.stderr


def test_hosts_reach_each_other_over_qemu_ssh(lab: LabInfo) -> None:
    """libvirtd on lab1 must reach lab2 by qemu+ssh:// with the lab key and strict host keys."""
    from vemigrate_dev.lab import Lab

    out = Lab.exec(lab.hosts[0].name, ["virsh", "-c", lab.hosts[1].ssh_uri, "hostname"], capture=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == lab.hosts[1].name


def test_status_reports_accelerator_and_daemons(lab: LabInfo, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["up"] is True
    assert report["accel"] in ("kvm", "tcg")
    assert report["accel"] == lab.accel
    for host in report["hosts"]:
        assert all(host["daemons"].values()), host
    assert {h["name"]: h["guestBridge"] for h in report["hosts"]}["lab3"] == "vmbr9"


def test_manifests_describe_every_host(lab: LabInfo) -> None:
    from vemigrate.api.host import HypervisorHost
    from vemigrate_dev.lab import kube

    objs = kube.objects(lab, "lab-test")
    hosts = [HypervisorHost.model_validate(o) for o in objs if o["kind"] == "HypervisorHost"]
    assert [h.spec.address for h in hosts] == [h.address for h in lab.hosts]
    assert all(h.spec.known_hosts_secret_ref is not None for h in hosts)
    secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
    assert set(secrets) == {kube.KEY_SECRET, kube.KNOWN_HOSTS_SECRET}
