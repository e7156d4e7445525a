"""libvirt prints every error to stderr before raising it; the tests read the exceptions instead."""

from __future__ import annotations

from typing import Any

import libvirt


def _quiet(_ctx: Any, _err: Any) -> None:
    return None


libvirt.registerErrorHandler(_quiet, None)
