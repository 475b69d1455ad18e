"""The A64 the Linux backend's VMM runs through ctypes to plant and read tags
(tagvisor.kvm.linux.tagging), executed on tagvisor's own A64 core."""

from tagvisor.arch import with_tag
from tagvisor.kvm.linux.tagging import LOAD_CODE, STORE_CODE
from tests.cpu.conftest import DATA, CpuMachine
from tests.cpu.test_mte import mte_on, tags_at

FUNCTIONS = DATA + 0x2000
OUT = DATA + 0x3000


def test_the_vmm_store_and_load_functions_tag_and_read_granules(cpu: CpuMachine) -> None:
    """Scenario: store_tags(tagged address of a 64-byte run, 4) then load_tags(address, 5,
    out) called with BLR, as ctypes calls them: four granules get tag 6, the fifth keeps
    its 0, and the bytes written out are the five tags."""
    mte_on(cpu)
    words = (*STORE_CODE, *LOAD_CODE)
    cpu.write(FUNCTIONS, b"".join(w.to_bytes(4, "little") for w in words))
    load = FUNCTIONS + 4 * len(STORE_CODE)
    cpu.go(
        f"""
        ldr x0, ={with_tag(DATA, 6):#x}
        mov x1, #4
        ldr x9, ={FUNCTIONS:#x}
        blr x9
        ldr x0, ={DATA:#x}
        mov x1, #5
        ldr x2, ={OUT:#x}
        ldr x9, ={load:#x}
        blr x9
        """
    )
    assert tags_at(cpu, DATA, 5) == [6, 6, 6, 6, 0]
    assert cpu.read(OUT, 5) == bytes([6, 6, 6, 6, 0])
