"""How the lab tier tells a guest kernel's own fault from the operator's (tests/lab/evidence.py), read
from real consoles: tests/unit/fixtures/lab/ holds the serial logs the lab tier kept in
$TMPDIR/vemigrate-evidence/ when a moved guest fell silent."""

from pathlib import Path

from tests.lab.evidence import kernel_oops

LAB = Path(__file__).parent / "fixtures" / "lab"


def _console(name: str) -> str:
    return (LAB / name).read_bytes().decode(errors="replace")


def test_a_fault_the_guest_outlived_for_two_beats_is_found() -> None:
    # CI on be778aa: test_a_link_cut_for_30_s_is_retried_and_attempt_two_moves_the_vm; boot 5529a859d9bb
    # reached lab2, beat once, faulted under `sleep`, beat again, then spun silent.
    oops = kernel_oops(_console("oops-after-migration-lab2.log"), "5529a859d9bb")
    assert oops is not None and "general protection fault" in oops


def test_the_source_console_of_the_same_boot_has_none() -> None:
    assert kernel_oops(_console("oops-after-migration-lab1.log"), "5529a859d9bb") is None


def test_a_panic_before_the_first_beat_on_the_target_is_the_arriving_boot_s_not_the_next_boot_s() -> None:
    # Boot 409fc195a522 arrived on lab2 and panicked in __run_timers before it beat; the guest booted
    # again as 4614f1507e1b, which printed nothing of the kind.
    console = _console("panic-and-reboot-lab2.log")
    assert "general protection fault" in (kernel_oops(console, "409fc195a522") or "")
    assert kernel_oops(console, "4614f1507e1b") is None


def test_a_fault_printed_before_another_boot_s_beat_is_that_boot_s() -> None:
    console = "HB boot=aaaaaaaaaaaa n=4\nHB boot=bbbbbbbbbbbb n=9\n[ 9.1] BUG: soft lockup\nHB boot=bbbbbbbbbbbb n=10\n"
    assert kernel_oops(console, "aaaaaaaaaaaa") is None
    assert kernel_oops(console, "bbbbbbbbbbbb") == "[ 9.1] BUG: soft lockup"
