"""The SUIT manifest processor (lwm2m_server.suit.processor): the command sequences of
a verified manifest run against a device's facts and component contents, as
draft-ietf-suit-manifest describes them — the shared sequence before each sequence,
conditions, Override Parameters and Set Component Index, Try Each with soft failure,
Run Sequence, Write / Fetch / Copy / Swap / Invoke, Abort, and unknown commands
refused. Manifests are hand made and signed (helpers of test_suit.py); the draft's
own examples run too."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lwm2m_server.suit import (
    INVOCATION, UPDATE, VENDOR_ID, AbortError, CommandError, ConditionFailedError, DeviceFacts,
    SuitError, UnsupportedError, load_public_key, make_class_id, process, verify_envelope,
)
from lwm2m_server.suit.commands import (
    ABORT, CHECK_CONTENT, CLASS_IDENTIFIER, COMPONENT_SLOT, DEVICE_IDENTIFIER, FETCH, IMAGE_MATCH,
    VENDOR_IDENTIFIER,
)
from test_suit import CLASS, FUZZ, MODEL, URI, manifest_tree, signed_envelope, verify, wrap
from conftest import shared_folder
from test_suit_examples import CLASS as EXAMPLE_CLASS
from test_suit_examples import VENDOR as EXAMPLE_VENDOR
from test_suit_examples import _hex_blocks

DEVICE = DeviceFacts(VENDOR_ID, CLASS)
COMPONENT = (b"m",)
IMAGE = {1: VENDOR_ID.bytes, 2: CLASS.bytes, 3: wrap([-16, hashlib.sha256(MODEL).digest()]), 14: len(MODEL)}
SHARED = [20, IMAGE, 1, 15, 2, 15]


def module(members: dict | None = None, *, shared: list | None = None, components: list | None = None,
           payloads: dict[str, bytes] | None = None):
    """A verified module around a hand-made manifest (install fetches URI, validate image-matches)."""
    tree = manifest_tree(members, shared)
    if components is not None:
        common = cbor2.loads(tree[3])
        tree[3] = wrap({**common, 2: components})
    return verify(signed_envelope(tree, payloads=payloads))


def digest(data: bytes) -> bytes:
    return wrap([-16, hashlib.sha256(data).digest()])


# -- procedures --------------------------------------------------------------------------------


def test_update_then_invocation_of_a_server_envelope():
    from test_suit import VALID
    verified = verify(VALID)
    component = verified.image.component
    update = process(verified, DEVICE, UPDATE)
    assert update.sequences == ("shared", "install", "shared", "validate")  # no payload-fetch: skipped
    assert update.contents == {component: MODEL} and update.invoked == ()
    invocation = process(verified, DEVICE, INVOCATION, contents=update.contents)
    assert invocation.sequences == ("shared", "validate", "shared", "invoke")
    assert invocation.invoked == (component,)


def test_the_given_contents_are_not_changed_and_the_shared_sequence_runs_once_without_sequences():
    verified = module({7: None, 20: None})
    contents = {COMPONENT: b"old"}
    assert process(verified, DEVICE, UPDATE, contents=contents).sequences == ("shared",)
    fetched = process(module(), DEVICE, UPDATE, contents=contents, fetched={URI: MODEL})
    assert fetched.contents == {COMPONENT: MODEL} and contents == {COMPONENT: b"old"}


def test_a_fetched_payload_comes_from_the_caller():
    verified = module()  # install fetches URI, nothing integrated, no payload passed to verify
    with pytest.raises(CommandError, match="nothing to fetch") as error:
        process(verified, DEVICE, UPDATE)
    assert (error.value.sequence, error.value.command) == ("install", FETCH)
    with pytest.raises(ConditionFailedError, match="digest") as error:
        process(verified, DEVICE, UPDATE, fetched={URI: MODEL[:-1] + b"X"})
    assert error.value.command == IMAGE_MATCH
    assert process(verified, DEVICE, UPDATE, fetched={URI: MODEL}).contents == {COMPONENT: MODEL}


@pytest.mark.parametrize(("device", "command"), [
    (DeviceFacts(uuid.uuid4(), CLASS), VENDOR_IDENTIFIER),
    (DeviceFacts(VENDOR_ID, make_class_id(VENDOR_ID, "another class")), CLASS_IDENTIFIER),
])
def test_the_shared_sequence_checks_vendor_and_class(device, command):
    with pytest.raises(ConditionFailedError) as error:
        process(module(), device, UPDATE, fetched={URI: MODEL})
    assert (error.value.sequence, error.value.command) == ("shared", command)


# -- conditions --------------------------------------------------------------------------------


def test_abort_fails_the_sequence_it_is_in():
    verified = module({7: wrap([3, 15, 14, 15])})
    with pytest.raises(AbortError, match="aborts") as error:
        process(verified, DEVICE, UPDATE, fetched={URI: MODEL})
    assert (error.value.sequence, error.value.command) == ("validate", ABORT)
    with pytest.raises(AbortError):
        process(verified, DEVICE, INVOCATION, contents={COMPONENT: MODEL})


def test_image_match_checks_size_then_digest_and_an_empty_component_fails():
    verified = module()
    with pytest.raises(ConditionFailedError, match="empty"):
        process(verified, DEVICE, ("validate",))
    with pytest.raises(ConditionFailedError, match=f"is 3 B, the image {len(MODEL)} B"):
        process(verified, DEVICE, ("validate",), contents={COMPONENT: b"abc"})
    process(verified, DEVICE, ("validate",), contents={COMPONENT: MODEL})


def test_check_content_and_write():
    verified = module({20: wrap([20, {18: b"config v2"}, 18, 2]), 7: wrap([20, {18: b"config v2"}, 6, 15])})
    assert process(verified, DEVICE, UPDATE).contents == {COMPONENT: b"config v2"}
    with pytest.raises(ConditionFailedError) as error:
        process(verified, DEVICE, ("validate",), contents={COMPONENT: b"config v1"})
    assert error.value.command == CHECK_CONTENT


def test_device_identifier_needs_the_devices_own():
    me = uuid.uuid4()
    verified = module({7: wrap([20, {24: me.bytes}, 24, 15])})
    with pytest.raises(ConditionFailedError, match="no device identifier"):
        process(verified, DEVICE, ("validate",))
    with pytest.raises(ConditionFailedError) as error:
        process(verified, DeviceFacts(VENDOR_ID, CLASS, device_id=uuid.uuid4()), ("validate",))
    assert error.value.command == DEVICE_IDENTIFIER
    process(verified, DeviceFacts(VENDOR_ID, CLASS, device_id=me), ("validate",))


def test_a_parameter_a_command_consumes_must_be_set():
    verified = module(shared=[20, {1: VENDOR_ID.bytes, 2: CLASS.bytes}, 1, 15, 2, 15])  # no digest
    with pytest.raises(CommandError, match="image digest is not set"):
        process(verified, DEVICE, ("validate",), contents={COMPONENT: MODEL})


# -- unknown commands, severed sequences -------------------------------------------------------


def test_an_unknown_command_is_a_failure_not_skipped():
    verified = module({20: wrap([20, {21: URI}, 21, 2, -300, b"custom", 3, 15])})
    with pytest.raises(UnsupportedError, match="custom command -300"):
        process(verified, DEVICE, UPDATE, fetched={URI: MODEL})
    inside = module({7: wrap([15, [wrap([-300, None]), wrap([3, 15])]])})  # not softened by Try Each
    with pytest.raises(UnsupportedError):
        process(inside, DEVICE, ("validate",), contents={COMPONENT: MODEL})


def test_process_dependency_is_refused_before_it_could_run():
    with pytest.raises(UnsupportedError, match="command 11"):
        module({20: wrap([11, 15])})


def test_a_severed_install_sequence_that_was_not_delivered_cannot_run():
    tree = manifest_tree()
    tree[20] = [-16, hashlib.sha256(cbor2.dumps(tree[20])).digest()]  # severed, not in the envelope
    verified = verify(signed_envelope(tree))
    with pytest.raises(UnsupportedError, match="install sequence is severed"):
        process(verified, DEVICE, UPDATE)
    process(verified, DEVICE, INVOCATION, contents={COMPONENT: MODEL})  # invocation does not need it


# -- flow control ------------------------------------------------------------------------------


def ab_slots(install_tail: list | None = None):
    """Example 3 of the draft, with real payloads: slot 0 gets image A, slot 1 image B."""
    a, b = b"image for slot A", b"image for slot B, longer"
    alternatives = [
        wrap([20, {5: slot}, 5, 5, 20, {3: digest(image), 14: len(image)}]) for slot, image in ((0, a), (1, b))
    ]
    uris = [wrap([20, {5: slot}, 5, 5, 20, {21: f"coap://h/{name}"}]) for slot, name in ((0, "a"), (1, "b"))]
    shared = [20, {1: VENDOR_ID.bytes, 2: CLASS.bytes}, 15, alternatives, 1, 15, 2, 15]
    install = [15, uris, 21, 2, 3, 15] + (install_tail or [])
    return module({20: wrap(install)}, shared=shared), {"coap://h/a": a, "coap://h/b": b}


@pytest.mark.parametrize("slot", [0, 1])
def test_try_each_picks_the_alternative_for_the_slot_the_device_writes(slot):
    verified, files = ab_slots()
    outcome = process(verified, DeviceFacts(VENDOR_ID, CLASS, slots={COMPONENT: slot}), UPDATE, fetched=files)
    assert outcome.contents == {COMPONENT: files["coap://h/" + "ab"[slot]]}


def test_try_each_fails_when_no_alternative_holds():
    verified, files = ab_slots()
    with pytest.raises(ConditionFailedError, match="no alternative of Try Each") as error:
        process(verified, DeviceFacts(VENDOR_ID, CLASS, slots={COMPONENT: 2}), UPDATE, fetched=files)
    assert (error.value.sequence, error.value.command) == ("shared", COMPONENT_SLOT)


def test_a_trailing_nil_lets_every_alternative_fail():
    verified = module({7: wrap([15, [wrap([14, 15]), wrap([20, {5: 7}, 5, 5]), None], 3, 15])})
    process(verified, DEVICE, ("validate",), contents={COMPONENT: MODEL})


def test_abort_in_one_alternative_moves_on_to_the_next():
    verified = module({7: wrap([15, [wrap([14, 15]), wrap([3, 15])]])})
    process(verified, DEVICE, ("validate",), contents={COMPONENT: MODEL})
    with pytest.raises(ConditionFailedError):
        process(verified, DEVICE, ("validate",), contents={COMPONENT: b"other"})


def test_soft_failure_off_inside_try_each_makes_a_failure_final():
    verified = module({7: wrap([15, [wrap([20, {13: False}, 14, 15]), wrap([3, 15])]])})
    with pytest.raises(AbortError):
        process(verified, DEVICE, ("validate",), contents={COMPONENT: MODEL})


def test_run_sequence_fails_unless_it_turned_soft_failure_on():
    hard = module({7: wrap([32, wrap([14, 15]), 3, 15])})
    with pytest.raises(AbortError):
        process(hard, DEVICE, ("validate",), contents={COMPONENT: MODEL})
    soft = module({7: wrap([32, wrap([20, {13: True}, 14, 15, 18, 2]), 3, 15])})
    outcome = process(soft, DEVICE, ("validate",), contents={COMPONENT: MODEL})
    assert outcome.contents == {COMPONENT: MODEL}  # the write after the abort did not run


def test_soft_failure_outside_try_each_or_run_sequence_is_an_error():
    verified = module({7: wrap([20, {13: True}, 3, 15])})
    with pytest.raises(CommandError, match="Soft Failure"):
        process(verified, DEVICE, ("validate",), contents={COMPONENT: MODEL})


def test_components_copy_swap_and_invoke_as_in_example_4():
    """Download area (1) → install copy into flash (0) → load copy into RAM (2) → invoke RAM."""
    image = MODEL
    common_digest = {3: digest(image), 14: len(image)}
    members = {
        16: wrap([12, 1, 20, {**common_digest, 21: URI}, 21, 2, 3, 15]),  # payload-fetch
        20: wrap([12, 0, 20, {22: 1}, 22, 2, 3, 15]),  # install: copy 1 → 0
        7: wrap([12, 0, 3, 15]),
        8: wrap([12, 2, 20, {**common_digest, 22: 0}, 22, 2, 3, 15]),  # load: copy 0 → 2
        9: wrap([12, 2, 23, 2]),
    }
    shared = [12, True, 20, IMAGE, 1, 15, 2, 15]
    verified = module(members, shared=shared, components=[[b"flash"], [b"download"], [b"ram"]])
    update = process(verified, DEVICE, UPDATE, fetched={URI: image})
    assert update.sequences == ("shared", "payload_fetch", "shared", "install", "shared", "validate")
    assert update.contents == {(b"download",): image, (b"flash",): image}
    run = process(verified, DEVICE, INVOCATION, contents=update.contents)
    assert run.contents[(b"ram",)] == image and run.invoked == ((b"ram",),)
    swapped = module({20: wrap([12, 0, 20, {22: 1}, 31, 2])}, shared=shared, components=[[b"a"], [b"b"]])
    assert process(swapped, DEVICE, ("install",), contents={(b"a",): b"1", (b"b",): b"2"}).contents == {
        (b"a",): b"2", (b"b",): b"1"}
    with pytest.raises(CommandError, match="source component"):
        process(swapped, DEVICE, ("install",), contents={(b"a",): b"1"})


# -- the draft's examples ----------------------------------------------------------------------


def example(number: int):
    folder = shared_folder("suit-examples")
    key = load_public_key(folder / "signing_key_es256.pem")
    verified = verify_envelope(_hex_blocks((folder / f"example{number}.txt").read_text())[-1], trust_anchors=[key],
                               expected_vendor_id=EXAMPLE_VENDOR, expected_class_id=EXAMPLE_CLASS,
                               min_sequence_number=None)
    return verified, DeviceFacts(EXAMPLE_VENDOR, EXAMPLE_CLASS)


@pytest.mark.parametrize(("slot", "uri"), [(0, "file1.bin"), (1, "file2.bin")])
def test_example3_fetches_the_image_for_the_devices_slot(slot, uri):
    verified, facts = example(3)
    with pytest.raises(CommandError, match=f"example.com/{uri}"):
        process(verified, DeviceFacts(facts.vendor_id, facts.class_id, slots={(b"\x00",): slot}), UPDATE)


def test_example0_secure_boot_validates_the_image_it_finds():
    verified, facts = example(0)
    with pytest.raises(ConditionFailedError, match="empty"):
        process(verified, facts, INVOCATION)
    with pytest.raises(ConditionFailedError, match="digest"):
        process(verified, facts, INVOCATION, contents={(b"\x00",): bytes(34768)})


# -- any signed manifest -----------------------------------------------------------------------

_PARAMETER = st.sampled_from([
    {3: digest(MODEL)}, {14: len(MODEL)}, {14: 3}, {18: b"abc"}, {21: URI}, {21: "#x"}, {22: 0},
    {22: 1}, {5: 0}, {5: 1}, {13: True}, {13: False}, {24: uuid.UUID(int=1).bytes}, {12: True},
])
_SIMPLE = st.one_of(
    st.sampled_from([1, 2, 3, 5, 6, 14, 24, 18, 21, 22, 23, 31]).map(lambda code: [code, 15]),
    st.sampled_from([0, 1, True, [0, 1]]).map(lambda index: [12, index]),
    _PARAMETER.map(lambda parameters: [20, parameters]),
    st.just([-300, None]),
)


def _sequences(depth: int = 2) -> st.SearchStrategy[list[Any]]:
    command = _SIMPLE if depth == 0 else st.one_of(
        _SIMPLE,
        _sequences(depth - 1).map(lambda s: [32, wrap(s)]),
        st.lists(_sequences(depth - 1), min_size=2, max_size=3).flatmap(
            lambda alternatives: st.sampled_from([[15, [wrap(a) for a in alternatives]],
                                                  [15, [wrap(a) for a in alternatives] + [None]]])),
    )
    return st.lists(command, min_size=1, max_size=6).map(lambda commands: [x for c in commands for x in c])


@FUZZ
@given(install=_sequences(), validate=_sequences(), slot=st.integers(0, 1),
       contents=st.dictionaries(st.sampled_from([(b"m",), (b"n",)]), st.sampled_from([MODEL, b"abc"])))
def test_any_signed_manifest_runs_or_raises_only_suit_errors(install, validate, slot, contents):
    try:
        verified = module({20: wrap(install), 7: wrap(validate)}, components=[[b"m"], [b"n"]])
    except SuitError:
        return
    facts = DeviceFacts(VENDOR_ID, CLASS, slots={(b"m",): slot})
    for procedure in (UPDATE, INVOCATION):
        try:
            outcome = process(verified, facts, procedure, contents=contents, fetched={URI: MODEL})
        except SuitError as error:
            assert error.reason
        else:
            assert set(outcome.contents) <= {(b"m",), (b"n",)}
