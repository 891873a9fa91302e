"""The batch body decoded as it arrives: the same items as json.loads however the bytes are cut, bounded work
for a body that trickles in, and refusals as soon as the body cannot be a batch."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacspace.errors import MalformedInput
from pacspace.server.batch_body import BatchDecoder, ItemTooLarge

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def decode(body: bytes, cuts: list[int], max_item: int = 1 << 16) -> list[object]:
    decoder, items, at = BatchDecoder(max_item), [], 0
    for cut in sorted(set(c % (len(body) + 1) for c in cuts)):
        items += decoder.feed(body[at:cut])
        at = cut
    items += decoder.feed(body[at:])
    return items + decoder.end()


@settings(max_examples=300, deadline=None)
@given(st.lists(_json, max_size=8), st.lists(st.integers(min_value=0), max_size=12), st.sampled_from(["", " ", "\n\t "]))
def test_any_cut_of_any_batch_gives_json_loads_items(items, cuts, ws):
    body = (f"{ws}{{{ws}\"records\"{ws}:{ws}[{ws}" + f"{ws},{ws}".join(json.dumps(i) for i in items) + f"{ws}]{ws}}}{ws}").encode()
    assert decode(body, cuts) == json.loads(body)["records"]


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'{"record": []}', b'{"records": {}}', b'{"records": [1, 2}', b'{"records": [1 2]}',
     b'{"records": []} x', b'{"records": [], "more": 1}', b'{"records": [{"a": }]}', b'{"records": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
     b'{"records": ["\xff"]}'],
)
def test_what_is_not_a_batch_is_malformed(body):
    with pytest.raises(MalformedInput):
        decode(body, [3, 10])


def test_a_malformed_item_is_refused_before_the_body_ends():
    decoder = BatchDecoder(1 << 16)
    with pytest.raises(MalformedInput):
        decoder.feed(b'{"records": [{"relationship": "a", "seq": 1}, {"seq" 2, "tag": "' + b"A" * 10_000)


def test_an_item_over_the_limit_is_refused_before_it_ends():
    decoder = BatchDecoder(1000)
    assert decoder.feed(b'{"records": [{"a": "' + b"x" * 900) == []
    with pytest.raises(ItemTooLarge):
        decoder.feed(b"x" * 200)


def test_a_body_that_trickles_in_a_byte_at_a_time_is_decoded_a_few_times_per_item_not_once_per_byte():
    item = {"relationship": "acme:r", "seq": 1, "tag": "A" * 44, "ciphertext": "B" * 60_000}
    body = json.dumps({"records": [item, item]}).encode()
    decoder = BatchDecoder(1 << 17)
    items = [i for b in range(len(body)) for i in decoder.feed(body[b : b + 1])] + decoder.end()
    assert items == [item, item]
    assert decoder.attempts <= 2 * 8  # each item decoded again only once its text doubled: log2(60,000 / 4,096) + 2


@pytest.mark.parametrize("constant", ["Infinity", "-Infinity", "NaN"])
def test_json_constants_cut_anywhere_decode_as_json_loads_does(constant):
    """Found by the property above: a cut inside "Infinity" was refused as broken JSON, since the token is
    longer than the margin the decoder allowed for a token the next bytes could complete."""
    body = f'{{"records": [[null, {constant}], []]}}'.encode()
    expected = json.loads(body)["records"]
    for cut in range(len(body) + 1):
        got = decode(body, [cut])
        assert json.dumps(got) == json.dumps(expected)  # NaN != NaN: compare their JSON
