"""Tag storage against a plain list-of-ints reference, and its error cases."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagvisor.arch import GranuleRangeError, TagStorage, TagValueError
from tagvisor.arch.tagformat import pack_tags, unpack_tags

GRANULES = 67  # odd, so both edges of the packed array get exercised


def reference_pack(tags: list[int]) -> list[int]:
    padded = tags + [0] * (len(tags) % 2)
    return [padded[i] | (padded[i + 1] << 4) for i in range(0, len(padded), 2)]


ranges = st.integers(0, GRANULES).flatmap(
    lambda first: st.tuples(st.just(first), st.integers(0, GRANULES - first))
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), ranges, st.integers(0, 2**31)),
        st.tuples(st.just("fill"), ranges, st.integers(0, 15)),
        st.tuples(st.just("packed"), ranges, st.integers(0, 2**31)),
        st.tuples(
            st.just("one"), st.tuples(st.integers(0, GRANULES - 1), st.just(1)), st.integers(0, 15)
        ),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_storage_matches_a_plain_list_under_any_sequence_of_writes(
    ops: list[tuple[str, tuple[int, int], int]],
) -> None:
    """Scenario: random single, bulk, fill and packed writes at odd and even granules.

    After every write, every read format (bytes, packed, single) agrees with a list.
    """
    storage = TagStorage(GRANULES)
    model = [0] * GRANULES
    for kind, (first, count), value in ops:
        rng = np.random.default_rng(value)
        tags = rng.integers(0, 16, count).astype(np.uint8)
        if kind == "set":
            storage.set(first, tags)
            model[first : first + count] = tags.tolist()
        elif kind == "fill":
            storage.fill(first, count, value)
            model[first : first + count] = [value] * count
        elif kind == "packed":
            storage.set_packed(first, count, bytes(reference_pack(tags.tolist())))
            model[first : first + count] = tags.tolist()
        else:
            storage.set_tag(first, value)
            model[first] = value
        assert storage.get(0, GRANULES).tolist() == model
    for first in (0, 1, GRANULES // 2):
        count = GRANULES - first
        assert storage.get_packed(first, count).tolist() == reference_pack(model[first:])
        assert [storage.tag_at(g) for g in range(first, GRANULES)] == model[first:]


@given(st.binary(min_size=0, max_size=600).map(lambda b: b[: len(b) - len(b) % 2]))
def test_pack_then_unpack_is_identity_on_low_nibbles(raw: bytes) -> None:
    """Scenario: arbitrary bytes pass through TO_GUEST-style packing and back.

    Only the low nibble of each byte survives, exactly as KVM keeps it.
    """
    tags = np.frombuffer(raw, np.uint8)
    packed = np.empty(len(raw) // 2, np.uint8)
    pack_tags(tags, packed, low_nibble_only=True)
    back = np.empty(len(raw), np.uint8)
    unpack_tags(packed, back)
    assert back.tolist() == [b & 0xF for b in raw]


def test_even_granule_lives_in_the_low_nibble() -> None:
    """Scenario: granule 0 gets tag 0x3 and granule 1 tag 0xA.

    The packed byte is 0xA3, the layout of Linux's mte_save_page_tags and of QEMU.
    """
    storage = TagStorage(2)
    storage.set(0, [0x3, 0xA])
    assert storage.get_packed(0, 2).tolist() == [0xA3]


def test_chunked_conversion_handles_ranges_larger_than_one_chunk() -> None:
    """Scenario: 1 Mi granules (16 MiB of memory) written and read in bulk."""
    count = 1 << 20
    tags = (np.arange(count, dtype=np.uint32) * 7 % 16).astype(np.uint8)
    storage = TagStorage(count + 1)
    storage.set(1, tags)
    assert np.array_equal(storage.get(1, count), tags)
    assert storage.tag_at(0) == 0


def test_bad_tag_value_is_refused_and_changes_nothing() -> None:
    """Scenario: a bulk write whose middle byte is 0x10.

    The write raises TagValueError naming the byte, and the storage is unchanged.
    """
    storage = TagStorage(8)
    storage.fill(0, 8, 5)
    with pytest.raises(TagValueError, match="tag byte 2 is 0x10"):
        storage.set(0, [1, 2, 0x10, 3, 4, 5])
    with pytest.raises(TagValueError):
        storage.set(1, [0x20])
    assert storage.get(0, 8).tolist() == [5] * 8


def test_low_nibble_only_drops_the_high_nibble() -> None:
    """Scenario: TO_GUEST writes 0xF3; the granule reads back 0x3 (the real kernel did)."""
    storage = TagStorage(3)
    storage.set(0, [0xF3, 0x1C, 0xE7], low_nibble_only=True)
    assert storage.get(0, 3).tolist() == [0x3, 0xC, 0x7]


@pytest.mark.parametrize(("first", "count"), [(-1, 1), (0, 9), (8, 1), (9, 0), (3, -1)])
def test_out_of_range_granules_raise_granule_range_error(first: int, count: int) -> None:
    """Scenario: reads of ranges that leave an 8-granule storage."""
    storage = TagStorage(8)
    with pytest.raises(GranuleRangeError, match="outside the storage of 8 granules"):
        storage.get(first, count)


def test_storage_for_memory_size_must_be_whole_granules() -> None:
    """Scenario: 100 bytes of memory is not a whole number of granules."""
    with pytest.raises(GranuleRangeError, match="16-byte granules"):
        TagStorage.covering(100)
    assert TagStorage.covering(4096).granules == 256


def test_uniform_tag_and_any_nonzero_describe_a_range() -> None:
    """Scenario: a page whose granules share a tag, then one granule differs."""
    storage = TagStorage(256)
    assert not storage.any_nonzero(0, 256)
    storage.fill(0, 256, 9)
    assert storage.uniform_tag(0, 256) == 9
    storage.set_tag(255, 1)
    assert storage.uniform_tag(0, 256) is None
    assert storage.any_nonzero(255, 1)
