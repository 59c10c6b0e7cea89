"""Registration interface logic: parsing, validation, the book's rules (no sockets)."""

import pytest

from ipso_objects import LwM2MPath
from lwm2m_server.core.registration import (
    DEFAULT_LIFETIME, ObjectLink, RegistrationBook, RegistrationError, parse_register, parse_update,
)

P = LwM2MPath.parse
PAYLOAD = b'</>;rt="oma.lwm2m";ct="60 110 112 11542",</1/0>,</3/0>;ver=1.2,</3303/0>,</3303/1>,</5>'


def test_register_full_parameters():
    params = parse_register(
        ["ep=urn:dev:mac:0024befffe804ff1", "lt=300", "lwm2m=1.1", "b=U", "Q", "sms=+123"], PAYLOAD, 40
    )
    assert (params.endpoint, params.lifetime, params.lwm2m_version) == ("urn:dev:mac:0024befffe804ff1", 300, "1.1")
    assert (params.binding, params.queue_mode, params.sms) == ("U", True, "+123")
    objects = params.object_list
    assert objects.content_formats == (60, 110, 112, 11542)
    assert objects.objects == (
        ObjectLink(P("/1/0")), ObjectLink(P("/3/0"), "1.2"), ObjectLink(P("/3303/0")),
        ObjectLink(P("/3303/1")), ObjectLink(P("/5")),
    )


def test_register_defaults_and_no_content_format():
    """lwm2m-node-lib sends no Content-Format and only ep: defaults from the Core spec apply."""
    params = parse_register(["ep=node1"], b"</1/0>,</3/0>", None)
    assert (params.lifetime, params.lwm2m_version, params.binding, params.queue_mode) == (
        DEFAULT_LIFETIME, "1.0", "U", False)


def test_lwm2m_1_0_queue_mode_in_binding():
    params = parse_register(["ep=a", "b=UQ"], b"</3/0>")
    assert (params.binding, params.queue_mode) == ("U", True)


def test_alternate_root_path():
    params = parse_register(["ep=a", "lwm2m=1.1"], b'</lwm2m>;rt="oma.lwm2m",</lwm2m/1/0>,</lwm2m/3/0>,</other>')
    assert params.object_list.root_path == "/lwm2m"
    assert [o.path for o in params.object_list.objects] == [P("/1/0"), P("/3/0")]


def test_unknown_parameters_are_kept():
    assert parse_register(["ep=a", "vendor=x"], b"").extra == {"vendor": "x"}


@pytest.mark.parametrize(
    "query, payload, content_format, code, reason",
    [
        (["lt=10"], b"", None, "4.00", "missing endpoint"),
        (["ep="], b"", None, "4.00", "ep needs a value"),
        (["ep=a", "lt=abc"], b"", None, "4.00", "lt='abc'"),
        (["ep=a", "lt=0"], b"", None, "4.00", "out of range"),
        (["ep=a", "lt=-5"], b"", None, "4.00", "not a positive integer"),
        (["ep=a", "lwm2m=9.9"], b"", None, "4.00", "not a supported version"),
        (["ep=a", "lwm2m=one"], b"", None, "4.00", "not a supported version"),
        (["ep=a", "b=X"], b"", None, "4.00", "not a binding"),
        (["ep=a", "b=UU"], b"", None, "4.00", "not a binding"),
        (["ep=a", "ep=b"], b"", None, "4.00", "given twice"),
        (["ep=a", "Q"], b"", None, "4.00", "needs LwM2M 1.1"),
        (["ep=a", "sms=abc"], b"", None, "4.00", "not an MSISDN"),
        (["ep=a"], b"</3/0", None, "4.00", "not a valid object list"),
        (["ep=a"], b"</3/0/1>", None, "4.00", "not an object or object instance"),
        (["ep=a"], b"</3/0>,</3/0>", None, "4.00", "listed twice"),
        (["ep=a"], b"</3>;ver=x", None, "4.00", "not a version"),
        (["ep=a"], b"</3/0>", 50, "4.15", "not link format"),
    ],
)
def test_register_refusals(query, payload, content_format, code, reason):
    with pytest.raises(RegistrationError) as caught:
        parse_register(query, payload, content_format)
    assert caught.value.code == code and reason in caught.value.reason


def test_update_parameters():
    assert parse_update([], b"").lifetime is None
    update = parse_update(["lt=60", "b=UQ"], b"</3/0>,</4/0>")
    assert (update.lifetime, update.binding, update.queue_mode) == (60, "U", True)
    assert len(update.object_list.objects) == 2
    with pytest.raises(RegistrationError, match="unknown Update parameter"):
        parse_update(["ep=x"], b"")


def test_update_tolerates_a_repeated_lwm2m_version():
    """lwm2m-node-lib puts lwm2m=1.0 in every Update; a different version is refused."""
    book, registration = book_with()
    assert book.update(registration.id, parse_update(["lwm2m=1.0"], b""), "x:1", 1001.0)
    with pytest.raises(RegistrationError, match="needs a new Register"):
        book.update(registration.id, parse_update(["lwm2m=1.1"], b""), "x:1", 1002.0)


def book_with(endpoint="dev1", now=1000.0, lifetime=60):
    book = RegistrationBook()
    params = parse_register([f"ep={endpoint}", f"lt={lifetime}"], b"</3/0>")
    registration, previous = book.register(params, "127.0.0.1:5000", now)
    assert previous is None
    return book, registration


def test_update_moves_address_and_extends_lifetime():
    book, registration = book_with()
    updated = book.update(registration.id, parse_update(["lt=120"], b""), "127.0.0.1:6001", 1050.0)
    assert (updated.address, updated.lifetime, updated.updated_at) == ("127.0.0.1:6001", 120, 1050.0)
    assert updated.registered_at == 1000.0 and book.by_endpoint("dev1") == updated


def test_second_register_of_an_endpoint_replaces_the_first():
    book, first = book_with()
    second, previous = book.register(parse_register(["ep=dev1"], b""), "127.0.0.1:7000", 1100.0)
    assert previous == first and second.id != first.id and len(book) == 1
    with pytest.raises(RegistrationError) as caught:
        book.update(first.id, parse_update([], b""), "x:1", 1101.0)
    assert caught.value.code == "4.04"


def test_expiry_and_deregister():
    book, registration = book_with(lifetime=60)
    assert book.expire(1060.0) == []  # exactly at the deadline it still lives
    with pytest.raises(RegistrationError):
        book.update(registration.id, parse_update([], b""), "x:1", 1061.0)
    assert book.expire(1061.0) == [registration] and len(book) == 0
    with pytest.raises(RegistrationError) as caught:
        book.deregister(registration.id)
    assert caught.value.code == "4.04"


def test_registration_queries():
    book, registration = book_with()
    assert registration.location == f"/rd/{registration.id}" and registration.supports(3)
    assert registration.instances(3) == [0] and not registration.supports(5)


def test_by_address_follows_registers_updates_and_removals():
    book, first = book_with("dev1")  # at 127.0.0.1:5000
    second, _ = book.register(parse_register(["ep=dev2"], b""), "127.0.0.1:5000", 1001.0)  # e.g. behind one NAT port
    assert book.by_address("127.0.0.1:5000") == second  # the one that came to the address last
    moved = book.update(second.id, parse_update([], b""), "127.0.0.1:6000", 1002.0)
    assert book.by_address("127.0.0.1:5000") == first and book.by_address("127.0.0.1:6000") == moved
    book.deregister(first.id)
    assert book.by_address("127.0.0.1:5000") is None
    again, replaced = book.register(parse_register(["ep=dev2"], b""), "127.0.0.1:7000", 1003.0)
    assert replaced == moved and book.by_address("127.0.0.1:6000") is None and book.by_address("127.0.0.1:7000") == again
    assert [r.endpoint for r in book] == ["dev2"]
