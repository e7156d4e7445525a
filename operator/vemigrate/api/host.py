"""HypervisorHost: a node the operator reaches over SSH, and the facts the pre-flight checks need."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field

from vemigrate.api.common import API_VERSION, Condition, Model, SecretKeyRef

KIND = "HypervisorHost"
PLURAL = "hypervisorhosts"
SINGULAR = "hypervisorhost"
SHORT_NAMES = ["hvh"]

# Default keys inside the referenced Secrets.
PRIVATE_KEY_KEY = "ssh-privatekey"  # the key name of kubernetes.io/ssh-auth Secrets
PASSWORD_KEY = "password"  # noqa: S105 (a key name, not a secret)
KNOWN_HOSTS_KEY = "known_hosts"

# A Secret a HypervisorHost may use (credentialsSecretRef, knownHostsSecretRef) carries this label
# with the value "true": whoever may write HypervisorHosts in a namespace may otherwise point one at
# any Secret there the operator can read, and have it sent to an address of their choosing. The
# type kubernetes.io/ssh-auth is not enough: other tools (Git deploy keys, CI) use it too.
SECRET_MARK_LABEL = "vemigrate.io/host-credentials"  # noqa: S105 (a label, not a secret)
SECRET_MARK_VALUE = "true"  # noqa: S105

# spec.libvirtURI: only SSH transports. The operator never gives this URI to libvirt: it takes the
# driver name (qemu, lxc, vz) from it and reaches the host's libvirtd through its own SSH connection
# (address, port, user and the verified host key of the spec), so the URI's user@host:port is not
# used. Query parameters are refused, every one: libvirt's (command, socket, netcat, keyfile,
# known_hosts, known_hosts_verify, no_verify, no_tty, sshauth, proxy, mode, pkipath, ...) either
# change what runs, where it connects or how the host is verified, or do nothing here; accepting one
# that does nothing would only mislead. The CRD's CEL rules and the driver check the same patterns.
LIBVIRT_URI_SCHEME = r"^(qemu|lxc|vz)[+](ssh|libssh|libssh2)://"
LIBVIRT_URI = r"^(qemu|lxc|vz)[+](ssh|libssh|libssh2)://([a-z_][a-z0-9_-]*@)?[A-Za-z0-9.:\[\]-]*(/system)?$"

HostAddress = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.:-]*[A-Za-z0-9])?$"),
]


class Driver(StrEnum):
    LIBVIRT = "libvirt"
    PRLCTL = "prlctl"


class VEKind(StrEnum):
    VM = "vm"
    CONTAINER = "container"


class Capability(StrEnum):
    """What the host's driver can do, as its probe reports it: the DriverCapabilities pre-flight check
    compares a migration's needs with its source host's list, so an option the driver cannot honour
    fails before anything moves instead of when the job is started."""

    LIVE_VM = "LiveVM"  # move a running or paused VM live
    LIVE_CONTAINER = "LiveContainer"  # move a running container live
    OFFLINE_VM = "OfflineVM"
    OFFLINE_CONTAINER = "OfflineContainer"
    CLONE = "Clone"  # spec.clone
    LIVE_CLONE = "LiveClone"  # spec.clone of a running VE, moved live
    SUSPENDED_CLONE = "SuspendedClone"  # spec.clone of a suspended VM (its saved memory takes the new UUID)
    CHANGE_SID = "ChangeSid"  # spec.changeSid
    BANDWIDTH = "Bandwidth"  # spec.bandwidthMiBps
    MAX_DOWNTIME = "MaxDowntime"  # spec.maxDowntimeMs
    AUTO_CONVERGE = "AutoConverge"  # spec.autoConverge
    POST_COPY = "PostCopy"  # spec.postCopy


class HostConditionType(StrEnum):
    REACHABLE = "Reachable"


class HostSpec(Model):
    """How to reach the host and how much it may do at once."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.knownHostsSecretRef) || has(self.hostKey)",
                    "message": "set knownHostsSecretRef or hostKey: host keys are always verified",
                },
                {
                    "rule": f"!has(self.libvirtURI) || self.libvirtURI.matches(r'{LIBVIRT_URI_SCHEME}')",
                    "message": (
                        "libvirtURI must use SSH (qemu+ssh://, lxc+ssh:// or vz+ssh://): the operator reaches "
                        "libvirtd only through its own SSH connection, with the host key verified"
                    ),
                    "fieldPath": ".libvirtURI",
                },
                {
                    "rule": (
                        "!has(self.libvirtURI) || !(self.libvirtURI.contains('?') || self.libvirtURI.contains('#'))"
                    ),
                    "message": (
                        "libvirtURI must not have query parameters or a fragment (command=, socket=, keyfile=, "
                        "no_verify=, ...): none is accepted"
                    ),
                    "fieldPath": ".libvirtURI",
                },
                {
                    # Said only when the two rules above hold, so a URI gets one message per problem.
                    "rule": (
                        f"!has(self.libvirtURI) || !self.libvirtURI.matches(r'{LIBVIRT_URI_SCHEME}') || "
                        "self.libvirtURI.contains('?') || self.libvirtURI.contains('#') || "
                        f"self.libvirtURI.matches(r'{LIBVIRT_URI}')"
                    ),
                    "message": "libvirtURI must be <driver>+ssh://[user@]host[:port][/system]",
                    "fieldPath": ".libvirtURI",
                },
            ]
        }
    }

    address: HostAddress = Field(description="DNS name or IP address the operator connects to over SSH.")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port.")
    user: Annotated[str, Field(max_length=32, pattern=r"^[a-z_][a-z0-9_-]*$")] = Field(
        default="root", description="SSH user; migration tools need root on the host."
    )
    driver: Driver = Field(
        default=Driver.LIBVIRT,
        description="libvirt (libvirt-python over qemu+ssh:// or vz+ssh://) or prlctl (Virtuozzo's prlctl over SSH).",
    )
    credentials_secret_ref: SecretKeyRef = Field(
        description=(
            "Secret holding the SSH private key (key ssh-privatekey by default) or a password (key "
            "password). Never inline."
        )
    )
    known_hosts_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret holding known_hosts lines for this host (key known_hosts by default).",
    )
    host_key: Annotated[str, Field(max_length=16384)] | None = Field(
        default=None,
        description=(
            "The host's public key, as in known_hosts without the host name (for example 'ssh-ed25519 AAAA...')."
        ),
    )
    libvirt_uri: Annotated[str, Field(max_length=2048)] | None = Field(
        default=None,
        alias="libvirtURI",
        description=(
            "libvirt connection URI, SSH only. Default: qemu+ssh://<user>@<address>:<port>/system; use "
            "lxc+ssh://... for libvirt LXC containers and vz+ssh://... for Virtuozzo's libvirt driver. Only "
            "the driver name is used: the operator connects to address, port and user over its own SSH "
            "connection with the host key verified. No query parameters."
        ),
    )
    migration_address: HostAddress | None = Field(
        default=None,
        description="Address other hosts send migration data to, when it differs from address (a dedicated network).",
    )
    max_inbound: int = Field(default=2, ge=1, le=64, description="Migrations into this host at once.")
    max_outbound: int = Field(default=2, ge=1, le=64, description="Migrations out of this host at once.")


class CPUFacts(Model):
    """The host CPU as the hypervisor reports it."""

    vendor: str | None = Field(default=None, max_length=64, description="Manufacturer, for example Intel or AMD.")
    model: str | None = Field(default=None, max_length=256, description="CPU model name.")
    count: int | None = Field(default=None, ge=0, description="Logical CPUs.")
    features: list[str] = Field(
        default_factory=list, max_length=1024, description="CPU feature flags the host offers to guests."
    )
    pool: str | None = Field(
        default=None,
        max_length=256,
        description="CPU pool or feature mask that guarantees live migration between its members.",
    )


class StorageFacts(Model):
    """Space on one storage path."""

    path: str = Field(max_length=1024, description="Directory VEs are stored in.")
    free_bytes: int = Field(ge=0, description="Bytes free there.")
    total_bytes: int | None = Field(default=None, ge=0, description="Size of the file system.")
    shared: bool = Field(
        default=False,
        description="On shared storage (Virtuozzo Storage, NFS): migrations copy no disk data.",
    )


class NetworkFacts(Model):
    """What the host's network looks like to the checks."""

    bridges: list[str] = Field(default_factory=list, max_length=256, description="Bridge names VEs can use.")
    subnets: list[str] = Field(
        default_factory=list, max_length=64, description="IP networks of the host's addresses, in CIDR form."
    )
    link_speed_mbps: int | None = Field(
        default=None, ge=0, description="Speed of the link that carries migrations, in Mbit/s."
    )


class VersionFacts(Model):
    """Software on the host."""

    product: str | None = Field(
        default=None,
        max_length=256,
        description="Product and version, for example 'Virtuozzo Hybrid Server 7.5.4' or 'libvirt 9.0.0'.",
    )
    hypervisor: str | None = Field(default=None, max_length=256, description="Hypervisor and version.")
    kernel: str | None = Field(default=None, max_length=256, description="Kernel release.")


class HostStatus(Model):
    """Facts read from the host on a timer, for the pre-flight checks."""

    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Reachable: whether the last probe reached the host, and why not.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    cpu: CPUFacts | None = Field(default=None, description="CPU vendor, count and features.")
    memory_total_bytes: int | None = Field(default=None, ge=0, description="Physical memory.")
    memory_free_bytes: int | None = Field(default=None, ge=0, description="Memory available for new VEs.")
    storage: list[StorageFacts] = Field(default_factory=list, max_length=64, description="Free space per storage path.")
    network: NetworkFacts | None = Field(default=None, description="Bridges, subnets and link speed.")
    time_offset_ms: int | None = Field(
        default=None, description="Host clock minus the operator's clock at the last probe, in milliseconds."
    )
    cpuid_override: bool | None = Field(
        default=None,
        description="Whether /proc/vz/cpuid_override exists (container live migration needs it).",
    )
    nested: bool | None = Field(
        default=None, description="Whether the host is itself a virtual machine (nested installation)."
    )
    version: VersionFacts | None = Field(default=None, description="Product, hypervisor and kernel versions.")
    encrypted_disk_copy: bool | None = Field(
        default=None,
        description=(
            "Whether local disks can move inside an encrypted live migration: prlctl's tunnel carries "
            "them; libvirt needs QEMU migration TLS certificates on the host."
        ),
    )
    ve_types: list[VEKind] = Field(
        default_factory=list, max_length=2, description="Kinds of VE the host runs: vm, container."
    )
    default_path: str | None = Field(
        default=None, max_length=1024, description="Directory new VEs go to when target.path is unset."
    )
    capabilities: list[Capability] = Field(
        default_factory=list,
        max_length=32,
        description=(
            "What the host's driver can do (LiveVM, LiveContainer, OfflineVM, OfflineContainer, Clone, LiveClone, "
            "SuspendedClone, ChangeSid, Bandwidth, MaxDowntime, AutoConverge, PostCopy): a migration from this "
            "host that needs anything else fails the DriverCapabilities check."
        ),
    )
    default_container_path: str | None = Field(
        default=None,
        max_length=1024,
        description="Directory new containers go to when target.path is unset, where it is not defaultPath.",
    )
    last_probe_time: datetime | None = Field(default=None, description="When the facts were read.")
    observed_generation: int | None = Field(default=None, ge=0, description="metadata.generation the last probe used.")


class HypervisorHost(Model):
    """A hypervisor node (libvirt/QEMU or Virtuozzo) that VEs migrate from and to."""

    api_version: str = Field(default=API_VERSION, description="vemigrate.io/v1alpha1")
    kind: str = Field(default=KIND, description="HypervisorHost")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: HostSpec = Field(description="How to reach the host.")
    status: HostStatus | None = Field(default=None, description="Facts from the last probe, written by the operator.")
