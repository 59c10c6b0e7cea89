"""CoRE Link Format (content format 40) and the LwM2M attributes it carries.

Every payload vector names its source. Decoding a vector gives the expected
links, and encoding those links gives back the identical bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipso_objects import DecodeError, EncodeError, LwM2MPath
from ipso_objects.codecs.link_format import (
    CONTENT_FORMAT,
    UNSET,
    InvalidAttributesError,
    Link,
    LinkParam,
    NotificationAttributes,
    decode,
    encode,
    lwm2m_root,
)


def P(*ids: int) -> LwM2MPath:
    return LwM2MPath.of(*ids)


def assert_round_trip(payload: bytes, expected: list[Link]) -> None:
    links = decode(payload)
    assert links == expected
    assert encode(links) == payload


def test_content_format_number_is_40():
    # RFC 6690 §7.3: application/link-format is CoAP Content-Format 40.
    assert CONTENT_FORMAT == 40


# -- RFC 6690 ------------------------------------------------------------------

# RFC 6690 §5, the anchor example (also quoted verbatim by h5.linkformat's README and
# the CoRE information-model draft): ct token, quoted title with a space, absolute target.
RFC6690_ANCHOR_EXAMPLE = (
    b'</sensors>;ct=40;title="Sensor Index",'
    b'</sensors/temp>;rt="temperature-c";if="sensor",'
    b'</sensors/light>;rt="light-lux";if="sensor",'
    b'<http://www.example.com/sensors/t123>;anchor="/sensors/temp";rel="describedby",'
    b'</t>;anchor="/sensors/temp";rel="alternate"'
)


def test_rfc6690_anchor_example():
    assert_round_trip(
        RFC6690_ANCHOR_EXAMPLE,
        [
            Link.of("/sensors", ("ct", "40"), ("title", "Sensor Index")),
            Link.of("/sensors/temp", ("rt", "temperature-c"), ("if", "sensor")),
            Link.of("/sensors/light", ("rt", "light-lux"), ("if", "sensor")),
            Link.of("http://www.example.com/sensors/t123", ("anchor", "/sensors/temp"), ("rel", "describedby")),
            Link.of("/t", ("anchor", "/sensors/temp"), ("rel", "alternate")),
        ],
    )


def test_rfc6690_example_as_printed_across_lines():
    # RFC 6690 §5 prints the same payload with line feeds after commas and one before
    # ";rel" ("linefeeds never occur in the actual format"); tolerate them anyway.
    printed = (
        b'</sensors>;ct=40;title="Sensor Index",\n'
        b'</sensors/temp>;rt="temperature-c";if="sensor",\n'
        b'</sensors/light>;rt="light-lux";if="sensor",\n'
        b'<http://www.example.com/sensors/t123>;anchor="/sensors/temp"\n'
        b';rel="describedby",\n'
        b'</t>;anchor="/sensors/temp";rel="alternate"\n'
    )
    assert decode(printed) == decode(RFC6690_ANCHOR_EXAMPLE)
    assert encode(decode(printed)) == RFC6690_ANCHOR_EXAMPLE


def test_flag_and_cardinal_attributes():
    # Qt CoAP documentation (qtcoap, discovery overview), RFC 6690 §5 firmware example
    # plus the RFC 7641 "obs" flag: a flag is written without "=".
    payload = (
        b'</sensors/temp>;rt="temperature-c";if="sensor";obs,'
        b'</sensors/light>;rt="light-lux";if="sensor",'
        b'</firmware/v2.1>;rt="firmware";sz=262144'
    )
    links = decode(payload)
    assert links[0].has("obs") and links[0].get("obs") is None
    assert links[0].params[-1] == LinkParam("obs")
    assert not links[1].has("obs")
    assert links[2].get("sz") == "262144"
    assert links[2].rt == ("firmware",)
    assert encode(links) == payload


def test_empty_payload_is_no_links():
    assert decode(b"") == []
    assert decode("") == []
    assert decode(b" \r\n") == []
    assert encode([]) == b""


def test_str_and_bytes_input_agree():
    assert decode(RFC6690_ANCHOR_EXAMPLE.decode()) == decode(RFC6690_ANCHOR_EXAMPLE)
    assert decode(bytearray(b"</1/0>")) == [Link("/1/0")]


# -- LwM2M Register payloads ---------------------------------------------------


def test_register_payload_of_core_1_0():
    # OMA-TS-LightweightM2M-V1_0 §5.3.1 Register example (object instances only).
    payload = b"</1/0>,</1/1>,</2/0>,</2/1>,</2/2>,</2/3>,</2/4>,</3/0>,</4/0>,</5>"
    links = decode(payload)
    assert [link.path for link in links] == [
        P(1, 0), P(1, 1), P(2, 0), P(2, 1), P(2, 2), P(2, 3), P(2, 4), P(3, 0), P(4, 0), P(5),
    ]
    assert all(link.params == () for link in links)
    assert lwm2m_root(links) == "/"
    assert encode(links) == payload


def test_register_payload_with_root_link_and_content_format():
    # Wakaama core/registration.c (REG_LWM2M_RESOURCE_TYPE with LWM2M_SUPPORT_JSON) and
    # Zephyr lwm2m_rw_link_format.c: "</>;rt=\"oma.lwm2m\";ct=11543" leads the payload.
    payload = b'</>;rt="oma.lwm2m";ct=11543,</1/0>,</3/0>'
    links = decode(payload)
    root = links[0]
    assert root.path == LwM2MPath(())
    assert root.rt == ("oma.lwm2m",)
    assert root.ct == (11543,)
    assert root.params[0].quoted is True and root.params[1].quoted is False
    assert [link.path for link in links[1:]] == [P(1, 0), P(3, 0)]
    assert encode(links) == payload


def test_register_payload_with_several_content_formats_and_versions():
    # Leshan integration test RegistrationTest (register_update_deregister): quoted,
    # space-separated ct list on the root link and object versions.
    payload = (
        b'</>;rt="oma.lwm2m";ct="60 110 112 1542 1543 11542 11543",'
        b"</1>;ver=1.1,</1/0>,</2>,</3>;ver=1.1,</3/0>,</3442/0>"
    )
    links = decode(payload)
    assert links[0].ct == (60, 110, 112, 1542, 1543, 11542, 11543)
    versions = {link.path: link.ver for link in links[1:]}
    assert versions == {P(1): "1.1", P(1, 0): None, P(2): None, P(3): "1.1", P(3, 0): None, P(3442, 0): None}
    assert encode(links) == payload


def test_register_payload_with_alternate_path():
    # LwM2M Core 1.1 §6.2.1 alternate-path example as quoted in a Go LwM2M server's
    # registration code: objects live below </lwm2m>.
    payload = (
        b'</lwm2m>;rt="oma.lwm2m",</lwm2m/1/0>,</lwm2m/1/1>,</lwm2m/2/0>,</lwm2m/2/1>,'
        b"</lwm2m/2/2>,</lwm2m/2/3>,</lwm2m/2/4>,</lwm2m/3/0>,</lwm2m/4/0>,</lwm2m/5>"
    )
    links = decode(payload)
    root = lwm2m_root(links)
    assert root == "/lwm2m"
    assert links[0].path_under(root) == LwM2MPath(())
    assert [link.path_under(root) for link in links[1:4]] == [P(1, 0), P(1, 1), P(2, 0)]
    assert links[-1].path_under(root) == P(5)
    assert links[1].path is None  # /lwm2m/1/0 is no LwM2M path below "/"
    assert encode(links) == payload


def test_register_payload_mixing_objects_versions_and_instances():
    # Anjay Lite tests/anj/standard_tests/io/register_payload.c (objects_with_instances).
    payload = b"</1/0>,</1/1>,</2>;ver=1.2,</2/0>,</3/0>,</3/1>,</3/2>,</3/3>,</4>,</5>;ver=2.3"
    links = decode(payload)
    assert links[2] == Link.of("/2", ("ver", "1.2"))
    assert links[2].ver == "1.2" and links[-1].ver == "2.3"
    assert encode(links) == payload


def test_root_path_rules_of_leshan():
    # Leshan RegistrationTest: with root /root, </3/0> is outside the tree, and
    # targets with text in them are not LwM2M paths.
    links = decode(b'</root>;rt="oma.lwm2m",</text>,</1/text/0/in/path>,</root/3>;ver=1.1,</root/3/0>,</3/0>')
    root = lwm2m_root(links)
    assert root == "/root"
    assert [link.path_under(root) for link in links] == [LwM2MPath(()), None, None, P(3), P(3, 0), None]
    # Unquoted rt (Leshan test_object_links_with_unquoted_rootpath) finds the root too.
    assert lwm2m_root(decode(b"</root>;rt=oma.lwm2m,</root/1/0>")) == "/root"


def test_path_is_none_for_targets_that_are_not_lwm2m_paths():
    for target in ["http://example.com/3/0", "/3/0?x=1", "/03/0", "/3//0", "/65535", "/1/2/3/4/5", "rel/3"]:
        assert Link(target).path is None, target
    assert Link("/65534/0/1/2").path == P(65534, 0, 1, 2)
    assert Link("/lwm2mx/1").path_under("/lwm2m") is None


# -- Discover and Bootstrap-Discover responses ----------------------------------


def test_discover_example_of_core_spec():
    # LwM2M Core Discover example on /3/0 (quoted in ThingsBoard's LwM2M
    # RpcLwm2mIntegrationWriteAttributesTest), without its trailing "...".
    payload = (
        b"</3/0>;pmin=10;pmax=60,</3/0/1>,</3/0/2>,</3/0/3>,</3/0/4>,</3/0/6>;dim=8,"
        b"</3/0/7>;gt=50;lt=42.2;st=0.5"
    )
    links = decode(payload)
    assert links[0].notification_attributes() == NotificationAttributes(pmin=10, pmax=60)
    assert links[5].dim == 8 and links[5].path == P(3, 0, 6)
    assert links[6].notification_attributes() == NotificationAttributes(gt=50.0, lt=42.2, st=0.5)
    assert encode(links) == payload


def test_discover_examples_from_anjay_lite():
    # Anjay Lite tests/anj/standard_tests/io/discover_payload.c, "examples from specification".
    first = (
        b"</3>;pmin=10,</3/0>;pmax=60,</3/0/1>,</3/0/2>,</3/0/3>,</3/0/4>,</3/0/6>;dim=2,"
        b"</3/0/7>;dim=2;gt=50;lt=42.2,</3/0/8>;dim=2,</3/0/11>,</3/0/16>"
    )
    second = b"</1>,</1/0>,</1/4>;pmax=300"
    third = (
        b"</3/0>;pmin=10;pmax=60,</3/0/1>,</3/0/2>,</3/0/3>,</3/0/4>,</3/0/6>;dim=2,</3/0/6/0>,"
        b"</3/0/6/3>,</3/0/7>;dim=2;gt=50;lt=42.2,</3/0/7/0>,</3/0/7/1>;lt=45,</3/0/8>;dim=2,"
        b"</3/0/8/1>,</3/0/8/2>,</3/0/11>,</3/0/16>"
    )
    for payload in (first, second, third):
        assert encode(decode(payload)) == payload
    links = decode(third)
    by_path = {link.path: link for link in links}
    assert by_path[P(3, 0, 7, 1)].notification_attributes() == NotificationAttributes(lt=45.0)
    assert by_path[P(3, 0, 7)].dim == 2
    assert by_path[P(3, 0, 7)].notification_attributes() == NotificationAttributes(gt=50.0, lt=42.2)
    assert decode(second)[2].notification_attributes().pmax == 300


def test_discover_with_contradicting_thresholds_decodes_but_attributes_do_not():
    # Anjay Lite discover_payload.c fifth example: lt=4.2e+21 above gt=50 violates
    # Core 1.1 §5.1.2 ("lt" < "gt"); the links still decode and re-encode.
    payload = b"</3/0/7>;dim=2;pmin=10;pmax=60;gt=50;lt=4.2e+21,</3/0/7/0>,</3/0/7/1>;lt=45"
    links = decode(payload)
    assert encode(links) == payload
    with pytest.raises(InvalidAttributesError, match="lt .* must be less than gt"):
        links[0].notification_attributes()


def test_bootstrap_discover_response():
    # Anjay Lite tests/anj/standard_tests/io/bootstrap_discover_payload.c (object_0_call, 1.1).
    payload = (
        b'</>;lwm2m=1.1,</0/0>;ssid=101;uri="coaps://server_1.example.com",</0/1>,'
        b'</0/2>;ssid=102;uri="coaps://server_2.example.com"'
    )
    links = decode(payload)
    assert links[0].lwm2m == "1.1"
    assert (links[1].ssid, links[1].uri) == (101, "coaps://server_1.example.com")
    assert (links[2].ssid, links[2].uri) == (None, None)
    assert links[3].path == P(0, 2)
    assert encode(links) == payload


# -- RFC 6690 syntax corners (Leshan DefaultLinkParserTest) ----------------------


def test_every_ptoken_character_is_a_token_value():
    payload = b"</foo>;param=!#$%&'()*+-.:<=>?@[]^_`{|}~a1z9;param2=\"foo\";param3,</bar>"
    links = decode(payload)
    assert links[0].params == (
        LinkParam("param", "!#$%&'()*+-.:<=>?@[]^_`{|}~a1z9"),
        LinkParam("param2", "foo"),
        LinkParam("param3"),
    )
    assert links[1] == Link("/bar")
    assert encode(links) == payload


def test_less_and_greater_signs_are_token_values():
    assert decode(b"</foo>;param=<,</bar>;param2=>") == [
        Link.of("/foo", ("param", "<")),
        Link.of("/bar", ("param2", ">")),
    ]


def test_uri_reference_characters_in_targets():
    # Commas and semicolons inside <...> belong to the target, not to the list.
    assert decode(b"</-._~a-zA-Z0-9:@!$&'()*+,;=>") == [Link("/-._~a-zA-Z0-9:@!$&'()*+,;=")]
    assert decode(b"</%20>,</uri//>") == [Link("/%20"), Link("/uri//")]


@pytest.mark.parametrize(
    ("quoted", "value"),
    [(",", ","), (";", ";"), ("<", "<"), (">", ">"), ("=", "="), (r"\"a\"", '"a"'), (r"\\", "\\"), (r"\x", "x")],
)
def test_quoted_values_keep_separators_and_unescape(quoted: str, value: str):
    # Leshan allow_escaped_characters; RFC 2616 quoted-pair: a backslash escapes any char.
    links = decode(f'</foo>;param="{quoted}",</bar>')
    assert links == [Link.of("/foo", ("param", value)), Link("/bar")]


def test_quoted_value_may_be_empty_or_non_ascii():
    assert decode('</a>;title="",</b>;title="Température 25 °C"'.encode()) == [
        Link.of("/a", ("title", "")),
        Link.of("/b", ("title", "Température 25 °C")),
    ]


def test_repeated_parameters_are_kept_in_order():
    links = decode(b'</a>;rel="x";rel="y";obs;rel=z')
    assert links[0].get_all("rel") == ("x", "y", "z")
    assert links[0].get("rel") == "x"
    with pytest.raises(DecodeError, match="given 3 times"):
        Link.of("/a", ("rt", "a"), ("rt", "b"), ("rt", "c")).rt


def test_extended_parameter_keeps_its_ext_value():
    # RFC 5988 §5.5 example of an RFC 5987 ext-value (link-extension ext-name-star in
    # RFC 6690 §2): written unquoted, kept as sent (percent-decoding is the caller's).
    payload = b"</TheBook/chapter2>;rel=\"previous\";title*=UTF-8'de'letztes%20Kapitel"
    links = decode(payload)
    assert links[0].get("title*") == "UTF-8'de'letztes%20Kapitel"
    assert encode(links) == payload


def test_whitespace_around_separators_is_tolerated():
    # An older Leshan RegistrationTest payload: spaces after commas and before ";empty".
    links = decode(b'</>;rt="oma.lwm2m";ct=100, </1/101>,</1/102>, </2/0>, </2/1> ;empty')
    assert [link.target for link in links] == ["/", "/1/101", "/1/102", "/2/0", "/2/1"]
    assert links[-1].params == (LinkParam("empty"),)


@pytest.mark.parametrize(
    "payload",
    [
        # Leshan LinkParserValidationTest, the cases that break RFC 6690 itself:
        b"</%>", b"</%a>", b"</%1g>", "</fóó>".encode(), "</foo>;pąrąm".encode(),
        "</foo>;param=ą".encode(), b'</foo>;param="bar', b'</foo>;param="bar\\"', b"</>;=",
        b"</>;param=", b"</>;param =123", b"</>;param= 123", b"<>", b"</", b"//>", b"</>,", b"</>;",
        # and more:
        b"\xff\xfe", b"</a>x", b"</a></b>", b"</a>,,</b>", b",</a>", b"</a b>", b'</a>;p="x\ny"',
        b"</a>;ext*", b'</a>;title*="x"', b"</a>;p=a b", b"<\x00>", b'</a>;p="\x01"',
    ],
)
def test_malformed_payloads_raise_decode_error(payload: bytes):
    with pytest.raises(DecodeError, match="link format"):
        decode(payload)


def test_decode_errors_say_where():
    with pytest.raises(DecodeError, match="offset 7"):
        decode(b"</1/0>;;")
    with pytest.raises(DecodeError, match="never closed"):
        decode(b'</1/0>;rt="oma')
    with pytest.raises(DecodeError, match="invalid UTF-8 at byte 2"):
        decode(b"</\xc3>")


# -- typed LwM2M accessors ------------------------------------------------------


def test_ct_accepts_token_or_quoted_list():
    # Leshan RegistrationTest: ct=42, ct="42", ct="0 42 11543".
    assert decode(b"</>;ct=42")[0].ct == (42,)
    assert decode(b'</>;ct="42"')[0].ct == (42,)
    assert decode(b'</>;ct="0 42 11543"')[0].ct == (0, 42, 11543)
    assert Link("/").ct == ()


@pytest.mark.parametrize("text", ['ct=""', "ct=abc", "ct=65536", 'ct="1,2"', "ct=-1", "ct"])
def test_bad_ct_raises_decode_error(text: str):
    link = decode(f"</>;{text}")[0]
    with pytest.raises(DecodeError, match="ct"):
        link.ct


@pytest.mark.parametrize("text", ["ver=12", "ver=.12", "ver=12.", "ver=a.2", "ver=2.b", "ver"])
def test_bad_object_version_raises_decode_error(text: str):
    # Anjay Lite register_payload.c (errors): "12", ".12", "12.", "a.2", "2.b" are no versions.
    with pytest.raises(DecodeError, match="ver"):
        decode(f"</3>;{text}")[0].ver
    assert decode(b'</1>;ver="2.2"')[0].ver == "2.2"  # Leshan parse_quoted_ver_attributes


def test_dim_and_ssid_ranges():
    # Leshan DefaultLwM2mLinkParserTest: dim 0..255, ssid 1..65534.
    assert decode(b"</3/0/11>;dim=255")[0].dim == 255
    assert decode(b"</0/1>;ssid=1")[0].ssid == 1
    for payload in (b"</3/0/11>;dim=256", b"</3/0/11>;dim=x"):
        with pytest.raises(DecodeError, match="dim"):
            decode(payload)[0].dim
    with pytest.raises(DecodeError, match="ssid"):
        decode(b"</0/1>;ssid=0")[0].ssid


def test_notification_attribute_without_value_in_a_link_is_an_error():
    # Leshan DefaultLwM2mLinkParserTest check_attribute_with_no_value_failed.
    assert decode(b"</3/0/11>;pmin=200")[0].notification_attributes() == NotificationAttributes(pmin=200)
    with pytest.raises(DecodeError, match="pmin"):
        decode(b"</3/0/11>;pmin")[0].notification_attributes()
    with pytest.raises(DecodeError, match="twice"):
        decode(b"</3/0/11>;pmin=1;pmin=2")[0].notification_attributes()


# -- notification attributes ----------------------------------------------------


def test_write_attributes_query_round_trip():
    # Leshan AttributeSetTest should_provide_query_params (without the "ver" attribute).
    query = ["pmin=5", "pmax=60", "epmin=30", "epmax=45", "gt=20.1", "lt=10"]
    attributes = NotificationAttributes.from_query(query)
    assert attributes == NotificationAttributes(pmin=5, pmax=60, gt=20.1, lt=10.0, epmin=30, epmax=45)
    assert attributes.to_query() == ["pmin=5", "pmax=60", "gt=20.1", "lt=10", "epmin=30", "epmax=45"]
    assert NotificationAttributes.from_query(attributes.to_query()) == attributes


def test_attribute_without_value_in_a_query_means_unset():
    # Leshan AttributeSetTest no_value_to_unset: "pmin&pmax&epmin&epmax".
    attributes = NotificationAttributes.from_query(["pmin", "pmax", "epmin", "epmax"])
    assert attributes == NotificationAttributes(pmin=UNSET, pmax=UNSET, epmin=UNSET, epmax=UNSET)
    assert attributes.to_query() == ["pmin", "pmax", "epmin", "epmax"]


def test_numbers_are_written_without_scientific_notation():
    # Leshan AttributeSetTest test_query_params_does_not_use_scientific_notation.
    assert NotificationAttributes(lt=10000000000000000000.0).to_query() == ["lt=10000000000000000000"]
    assert NotificationAttributes(gt=0.0000000000009223372).to_query() == ["gt=0.0000000000009223372"]
    assert NotificationAttributes(st=1e19).to_query() == ["st=10000000000000000000"]
    assert NotificationAttributes.from_query(["lt=4.2e+21"]).lt == 4.2e21


def test_lwm2m_1_2_attributes():
    attributes = NotificationAttributes.from_query(["edge=1", "con=0", "hqmax=10"])
    assert (attributes.edge, attributes.con, attributes.hqmax) == (1, 0, 10)
    for query in (["edge=2"], ["con=-1"], ["hqmax=1.5"]):
        with pytest.raises(DecodeError):
            NotificationAttributes.from_query(query)


def test_threshold_rules_of_core_spec():
    # Core 1.1 §5.1.2 / 1.2 §7.3: "lt" < "gt", and "lt" + 2*"st" < "gt" when all are set.
    NotificationAttributes(gt=50, lt=42.2, st=0.5)
    NotificationAttributes(lt=42.2, st=100)  # no gt: nothing to compare
    with pytest.raises(InvalidAttributesError, match="less than gt"):
        NotificationAttributes(gt=10, lt=10)
    with pytest.raises(InvalidAttributesError, match=r"lt \+ 2\*st"):
        NotificationAttributes(gt=43.0, lt=42.2, st=0.4)  # exactly equal in decimal
    with pytest.raises(InvalidAttributesError, match="st must be >= 0"):
        NotificationAttributes(st=-1)
    # Negative thresholds are fine (OMA LwM2M for Developers issue #563, as in Leshan).
    NotificationAttributes(lt=-20, gt=-10)


def test_pmax_below_pmin_is_accepted_as_the_spec_says_pmax_is_then_ignored():
    assert NotificationAttributes(pmin=60, pmax=10).to_query() == ["pmin=60", "pmax=10"]


@pytest.mark.parametrize(
    "kwargs",
    [{"pmin": -1}, {"pmax": 1.5}, {"epmin": True}, {"gt": float("nan")}, {"lt": float("inf")}, {"st": "1"}],
)
def test_out_of_range_values_are_rejected(kwargs):
    with pytest.raises(InvalidAttributesError):
        NotificationAttributes(**kwargs)


@pytest.mark.parametrize(
    "query",
    [["pmin=abc"], ["pmin="], ["pmin=-1"], ["gt=nan"], ["gt=1e999"], ["gt=0x10"], ["ver=1.1"],
     ["pmin=1", "pmin=2"], [""], ["pmin=" + "9" * 5000], ["gt=" + "1" * 5000]],
)
def test_malformed_queries_raise_decode_error(query):
    with pytest.raises(DecodeError):
        NotificationAttributes.from_query(query)


def test_write_attributes_update_keeps_sets_and_removes():
    current = NotificationAttributes(pmin=10, pmax=60, gt=50.0)
    change = NotificationAttributes.from_query(["pmin=5", "pmax"])
    assert current.updated_with(change) == NotificationAttributes(pmin=5, gt=50.0)


def test_attributes_to_discover_link():
    # Anjay Lite discover_payload.c fourth example: "</3/0>;pmin=10;pmax=60".
    link = Link("/3/0", NotificationAttributes(pmin=10, pmax=60).to_params())
    assert encode([link]) == b"</3/0>;pmin=10;pmax=60"
    with pytest.raises(EncodeError):
        NotificationAttributes(pmin=UNSET).to_params()


# -- encoder --------------------------------------------------------------------


def test_encoder_quotes_by_lwm2m_convention_and_when_needed():
    links = [
        Link.of("/", ("rt", "oma.lwm2m"), ("ct", 11543)),
        Link.of("/0/0", ("ssid", 101), ("uri", "coaps://h")),
        Link.of("/a", ("title", 'say "hi", ok; \\ \n'), ("x", ""), ("obs", None)),
    ]
    assert encode(links) == (
        b'</>;rt="oma.lwm2m";ct=11543,</0/0>;ssid=101;uri="coaps://h",'
        b'</a>;title="say \\"hi\\", ok; \\\\ \\\n";x="";obs'
    )
    assert decode(encode(links)) == links


def test_encoder_keeps_quoting_of_decoded_values():
    # Leshan writes ver="2.2", Anjay ver=2.2: each re-encodes as it came.
    assert encode(decode(b'</1>;ver="2.2",</2>;ver=2.2')) == b'</1>;ver="2.2",</2>;ver=2.2'
    assert encode([Link("/1", (LinkParam("rt", "x", quoted=False),))]) == b"</1>;rt=x"
    assert encode([Link("/1", (LinkParam("p", "a b", quoted=False),))]) == b'</1>;p="a b"'


@pytest.mark.parametrize(
    "link",
    [Link(""), Link("/a b"), Link("/é"), Link.of("/a", ("bad name", "1")), Link.of("/a", ("", "1")),
     Link.of("/a", ("ext*", None)), Link.of("/a", ("p", "\udc80")), Link("/a", ("p",))],  # type: ignore[arg-type]
)
def test_encoder_rejects_what_cannot_be_written(link: Link):
    with pytest.raises(EncodeError):
        encode([link])


# -- properties -----------------------------------------------------------------

_TARGET_CHARS = "abcXYZ019-._~:/?#[]@!$&'()*+,;="
_PTOKEN_CHARS = "abz09!#$%&'()*+-./:<=>?@[]^_`{|}~"

targets = st.lists(
    st.one_of(st.sampled_from(_TARGET_CHARS), st.sampled_from(["%20", "%2C", "%3e"])), min_size=1, max_size=12
).map("".join)
names = st.text(alphabet="abcPQR09!#$&+-.^_`|~", min_size=1, max_size=6)
values = st.one_of(
    st.none(),
    st.text(alphabet=_PTOKEN_CHARS, min_size=1, max_size=8),
    st.text(alphabet=st.sampled_from(',;"\\ <>=\t\n\x01é€ab'), max_size=8),
    st.text(max_size=8),
)
params = st.builds(LinkParam, names, values, st.sampled_from([None, True, False]))
links = st.builds(Link, targets, st.lists(params, max_size=4).map(tuple))


@given(st.lists(links, max_size=5))
def test_encoded_links_decode_to_the_same_links(generated: list[Link]):
    payload = encode(generated)
    assert decode(payload) == generated
    assert encode(decode(payload)) == payload


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_decode_error(data: bytes):
    try:
        decode(data)
    except DecodeError:
        pass


@given(st.text(alphabet=st.sampled_from('<>/;,="\\ a1é\n%*'), max_size=60) | st.text(max_size=60))
def test_arbitrary_text_decodes_or_raises_decode_error_and_accessors_too(text: str):
    try:
        decoded = decode(text)
    except DecodeError:
        return
    for link in decoded:
        for accessor in ("ver", "ct", "rt", "dim", "ssid", "uri", "lwm2m", "path"):
            try:
                getattr(link, accessor)
            except DecodeError:
                pass
        try:
            link.notification_attributes()
        except DecodeError:
            pass


@given(st.lists(st.text(alphabet=st.sampled_from("pmingtlsxcode=0123456789.-+eE"), max_size=12), max_size=4))
def test_arbitrary_queries_parse_or_raise_decode_error(query: list[str]):
    try:
        NotificationAttributes.from_query(query)
    except DecodeError:
        pass


finite = st.floats(allow_nan=False, allow_infinity=False)
maybe_int = st.one_of(st.none(), st.just(UNSET), st.integers(min_value=0, max_value=10**9))


@given(maybe_int, maybe_int, st.one_of(st.none(), st.just(UNSET), finite), maybe_int, st.sampled_from([None, 0, 1]))
def test_attribute_queries_round_trip(pmin, pmax, gt, hqmax, edge):
    attributes = NotificationAttributes(pmin=pmin, pmax=pmax, gt=gt, hqmax=hqmax, edge=edge)
    assert NotificationAttributes.from_query(attributes.to_query()) == attributes
