"""What a scanned code means: reference vectors per carrier, and properties of the check digits."""

from __future__ import annotations

import pickle
import string
from collections.abc import Callable

import pytest
from biip.checksums import gs1_standard_check_digit
from hypothesis import example, given
from hypothesis import strategies as st

from parcel.errors import ParcelError
from parcel.identify import (
    KINDS,
    S10_COUNTRIES,
    ParcelId,
    Rejection,
    dhl_check_digit,
    fedex_express_check_digit,
    gs1_mod10,
    identify,
    parse_cli_code,
    s10_check_digit,
    to_json,
    ups_check_digit,
)

GS = "\x1d"
RS = "\x1e"
EOT = "\x04"


def rejection_reason(code: str, aim: str | None = None) -> str:
    with pytest.raises(Rejection) as caught:
        identify(code, aim)
    assert caught.value.raw == code
    assert str(caught.value) == caught.value.reason
    return caught.value.reason


def other_digits(check: int) -> list[str]:
    return [str(d) for d in range(10) if d != check]


# --- reference vectors -----------------------------------------------------------------------
# Besides the field reference's examples, the carrier vectors are published test numbers
# (jkeen/tracking_number_data), so the check digit rules are not only checked against themselves.


def test_s10_reference_vectors() -> None:
    parcel = identify("RB123456785GB")
    details = {"service": "RB", "country": "GB"}
    assert parcel == ParcelId("s10", "RB123456785GB", None, "RB123456785GB", details)
    assert s10_check_digit("12345678") == 5
    assert rejection_reason("RB123456786GB") == "S10 check digit is 6, expected 5"


def _s10_weighted_sum(serial: str) -> int:
    return sum(int(d) * w for d, w in zip(serial, (8, 6, 4, 2, 3, 5, 9, 7), strict=True))


def test_s10_check_digit_maps_ten_to_zero_and_eleven_to_five() -> None:
    assert s10_check_digit("00000001") == 4  # S = 7, C = 11 - 7
    serials = [f"{n:08d}" for n in range(200)]
    remainder_one = next(s for s in serials if _s10_weighted_sum(s) % 11 == 1)  # C = 10
    remainder_zero = next(s for s in serials if _s10_weighted_sum(s) % 11 == 0)  # C = 11
    assert s10_check_digit(remainder_one) == 0
    assert s10_check_digit(remainder_zero) == 5
    assert s10_check_digit("00000000") == 5


@pytest.mark.parametrize(
    "code", ["1Z5R89390357567127", "1Z879E930346834440", "1Z410E7W0392751591", "1Z8V92A70367203024"]
)
def test_ups_valid(code: str) -> None:
    parcel = identify(code)
    assert (parcel.kind, parcel.id) == ("ups", code)


def test_ups_details_and_invalid() -> None:
    assert identify("1Z5R89390357567127").details == {"shipper_number": "5R8939", "service": "03"}
    assert ups_check_digit("5R8939035756712") == 7
    assert rejection_reason("1Z5R89390357567128") == "UPS check digit is 8, expected 7"
    assert rejection_reason("1Z1111111111111111").startswith("UPS check digit is 1")
    assert rejection_reason("2Z5R89390357567127").startswith("not a parcel identifier we know")


@pytest.mark.parametrize(
    "code", ["986578788855", "477179081230", "799531274483", "790535312317", "974367662710"]
)
def test_fedex_express_valid(code: str) -> None:
    parcel = identify(code)
    assert (parcel.kind, parcel.id, parcel.details) == ("fedex", code, {"service": "express"})


def test_fedex_express_invalid_names_the_check() -> None:
    assert rejection_reason("996578788855") == "FedEx Express check digit is 5, expected 6"


@pytest.mark.parametrize("code", ["041441760228964", "568283610012000", "568283610012734"])
def test_fedex_ground_valid(code: str) -> None:
    parcel = identify(code)
    assert (parcel.kind, parcel.id, parcel.details) == ("fedex", code, {"service": "ground"})


def test_fedex_ground_invalid_names_the_check() -> None:
    assert rejection_reason("568283610012732") == "FedEx Ground check digit is 2, expected 4"


def test_fedex_ground_96_barcode_yields_the_15_digit_tracking_number() -> None:
    parcel = identify("9611020987654312345672")
    assert (parcel.kind, parcel.id) == ("fedex", "987654312345672")
    assert parcel.details == {"service": "ground", "barcode": "9611020987654312345672"}


def test_96_number_failing_fedex_falls_through_to_usps() -> None:
    body = "96" + "1" * 19
    usps = body + str(gs1_mod10(body))
    assert usps[-1] != str(gs1_mod10(usps[7:-1]))  # it is not a valid FedEx 96 barcode
    parcel = identify(usps)
    assert (parcel.kind, parcel.id) == ("usps", usps)


def test_96_number_failing_both_names_both_checks() -> None:
    reason = rejection_reason("9600000000000000000001")
    assert reason.startswith("no carrier's check digit fits this 22-digit number")
    assert "FedEx Ground (96 barcode) check digit is 1, expected 0" in reason
    assert "USPS check digit is 1, expected 7" in reason


@pytest.mark.parametrize(
    "code", ["3318810025", "73891051146", "8487135506", "1099255990", "3821724944"]
)
def test_dhl_valid(code: str) -> None:
    parcel = identify(code)
    assert (parcel.kind, parcel.id) == ("dhl", code)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("3318810010", "DHL Express check digit is 0, expected 4"),
        ("3318810034", "DHL Express check digit is 4, expected 6"),
    ],
)
def test_dhl_invalid(code: str, reason: str) -> None:
    assert rejection_reason(code) == reason


def test_sscc_bare_and_with_ai_00() -> None:
    bare = identify("157035381410375177")
    assert (bare.kind, bare.id, bare.details) == ("sscc", "157035381410375177", {})
    with_ai = identify("00157035381410375177")
    assert (with_ai.kind, with_ai.id) == ("sscc", "157035381410375177")
    assert with_ai.details == {"ai_00": "157035381410375177"}
    assert rejection_reason("157035381410375176") == "SSCC check digit is 6, expected 7"
    assert (
        rejection_reason("00157035381410375176") == "SSCC in AI (00) check digit is 6, expected 7"
    )


def test_sscc_with_bad_check_digit_is_rejected_although_biip_returns_a_message() -> None:
    # The pitfall: biip.parse() still gives a gs1_message here; only result.sscc is None.
    assert "check digit is 6, expected 7" in rejection_reason("]C100157035381410375176")


@pytest.mark.parametrize(
    "code",
    [
        "9505511069605048600624",
        "9101123456789000000013",
        "9400111201080805483016",
        "9361289878700317633795",
        "9405803699300124287899",
    ],
)
def test_usps_without_zip(code: str) -> None:
    parcel = identify(code)
    assert (parcel.kind, parcel.id, parcel.details) == ("usps", code, {})


def test_usps_20_digits() -> None:
    body = "9" + "2" * 18
    code = body + str(gs1_mod10(body))
    assert identify(code).kind == "usps"


def test_usps_invalid() -> None:
    assert rejection_reason("9200000000000000000000") == "USPS check digit is 0, expected 1"


@pytest.mark.parametrize("gs", ["<GS>", "<gs>", "\\x1d", "\\x1D"])
@pytest.mark.parametrize("zip_code", ["22153", "221531234"])
def test_usps_with_zip_and_gs(gs: str, zip_code: str) -> None:
    code = parse_cli_code(f"420{zip_code}{gs}9101026837331000039521")
    parcel = identify(code)
    assert (parcel.kind, parcel.id) == ("usps", "9101026837331000039521")
    assert parcel.details == {"ship_to_postal_code": zip_code}
    assert identify("]C1" + code).aim == "]C1"


@pytest.mark.parametrize("aim", ["", "]C1"])
@pytest.mark.parametrize("zip_code", ["22153", "221531234"])
def test_usps_with_zip_glued_needs_gs(aim: str, zip_code: str) -> None:
    reason = rejection_reason(f"{aim}420{zip_code}9101026837331000039521")
    assert reason.startswith("USPS IMpb needs a GS after the ZIP code")


def test_usps_with_zip_and_bad_check_digit() -> None:
    reason = rejection_reason("42022153" + GS + "9101026837331000039522")
    assert reason == "USPS check digit is 2, expected 1"


# --- GS1 element strings ---------------------------------------------------------------------


def test_gs1_with_sscc_is_kind_sscc_with_the_other_ais_in_details() -> None:
    gsin = "1234567890123456"
    gsin += str(gs1_mod10(gsin))
    code = parse_cli_code(f"]C100157035381410375177420SE-11455<GS>402{gsin}<GS>4215279999")
    parcel = identify(code)
    assert (parcel.kind, parcel.id, parcel.aim) == ("sscc", "157035381410375177", "]C1")
    assert parcel.details == {
        "ai_00": "157035381410375177",
        "ai_420": "SE-11455",
        "ai_402": gsin,
        "ai_421": "5279999",
    }


@pytest.mark.parametrize("aim", ["]C1", "]d2", "]Q3", "]e0", "]J1"])
def test_gs1_aims(aim: str) -> None:
    assert identify(aim + "00157035381410375177").aim == aim


def test_gs1_without_sscc_uses_ginc_then_gsin() -> None:
    gsin = "1234567890123456"
    gsin += str(gs1_mod10(gsin))
    gln = "123456789012"
    gln += str(gs1_mod10(gln))
    parcel = identify(parse_cli_code(f"401CONSIGNMENT-7<GS>402{gsin}<GS>410{gln}"))
    assert (parcel.kind, parcel.id) == ("gs1", "CONSIGNMENT-7")
    assert parcel.details == {"ai_401": "CONSIGNMENT-7", "ai_402": gsin, "ai_410": gln}
    parcel = identify(f"]d2402{gsin}{GS}403ROUTE9")
    assert (parcel.kind, parcel.id) == ("gs1", gsin)
    assert parcel.details == {"ai_402": gsin, "ai_403": "ROUTE9"}


def test_gs1_bad_gsin_and_gln_check_digits() -> None:
    assert "GSIN in AI (402) check digit is" in rejection_reason("]C140212345678901234567")
    reason = rejection_reason(f"]C100157035381410375177413{'1' * 13}")
    assert reason.startswith("GLN in AI (413) check digit is 1, expected")


def test_gs1_without_parcel_identifier() -> None:
    reason = rejection_reason(parse_cli_code("42012345<GS>403XYZ"))
    assert reason.startswith("GS1 label carries no parcel identifier")
    assert reason.endswith("AIs found: (420) ship-to postal code, (403) routing code")


def test_gs1_unreadable() -> None:
    # A bare SSCC behind a GS1 AIM is malformed GS1 (no AI): not guessed into an SSCC.
    assert rejection_reason("]C1157035381410375177").startswith("GS1 label data could not be read")
    assert rejection_reason("401ABC" + GS + "4020000").startswith(
        "GS1 label data could not be read"
    )


def test_gs1_leading_and_trailing_gs_are_ignored() -> None:
    assert identify(GS + "00157035381410375177" + GS).id == "157035381410375177"


def test_iso_15434_envelopes() -> None:
    code = parse_cli_code("[)><RS>05<GS>00157035381410375177<GS>42012345<RS><EOT>")
    parcel = identify(code)
    assert (parcel.kind, parcel.id, parcel.details["ai_420"]) == ("sscc", parcel.id, "12345")
    reason = rejection_reason(parse_cli_code("[)><RS>01<GS>961Z1234<GS>UPSN<RS><EOT>"))
    assert reason.startswith("ISO/IEC 15434 envelope format 01 is not read here")
    assert "malformed" in rejection_reason("[)>garbage")


# --- AIM, whitespace, case, garbage ----------------------------------------------------------


def test_aim_prefix_and_separate_aim() -> None:
    assert identify("]C0RB123456785GB").aim == "]C0"
    parcel = identify("1Z5R89390357567127", aim="]C0")
    assert (parcel.aim, parcel.id) == ("]C0", "1Z5R89390357567127")
    assert identify("00157035381410375177", aim="]C1").kind == "sscc"


def test_product_barcodes_are_rejected_as_such() -> None:
    # 986578788855 is a valid FedEx Express number; behind ]E0 it is a UPC-A, not a parcel.
    assert rejection_reason("]E0986578788855") == "a product barcode (EAN/UPC), not a parcel label"


@pytest.mark.parametrize("code", ["]", "]C", "]1A", "]C\x1d"])
def test_malformed_aim(code: str) -> None:
    assert rejection_reason(code).startswith("malformed AIM symbology identifier")
    assert rejection_reason("RB123456785GB", aim="C1").startswith("malformed AIM")


def test_whitespace_and_case() -> None:
    assert identify("  rb123456785gb\r\n").id == "RB123456785GB"
    assert identify("\t1z5r89390357567127 ").id == "1Z5R89390357567127"
    assert identify(" ]C100157035381410375177 ").kind == "sscc"
    # GS is whitespace to Python's str.strip(), but here it is data.
    assert identify("42022153" + GS + "9101026837331000039521\n").kind == "usps"


@pytest.mark.parametrize(
    ("code", "start"),
    [
        ("hello", "not a parcel identifier we know: 'hello'"),
        ("", "empty scan"),
        ("   \r\n", "empty scan"),
        ("]C1", "empty scan"),
        ("12345", "not a parcel identifier we know: 5 digits"),
        ("1234567890123", "not a parcel identifier we know: 13 digits"),
        ("1570353814103751770", "not a parcel identifier we know: 19 digits"),
        ("RB12345678GB", "not a parcel identifier we know"),
        ("\u0661\u0665\u0667035381410375177", "not a parcel identifier we know"),
        ("１５７０３５３８１４１０３７５１７７", "not a parcel identifier we know"),
    ],
)
def test_garbage(code: str, start: str) -> None:
    assert rejection_reason(code).startswith(start)


def test_rejection_is_a_parcel_error_and_pickles() -> None:
    with pytest.raises(ParcelError):
        identify("hello")
    original = Rejection("S10 check digit is 6, expected 5", "RB123456786GB", "]C0")
    copy = pickle.loads(pickle.dumps(original))
    assert (copy.reason, copy.raw, copy.aim) == (original.reason, original.raw, original.aim)


def test_parcel_id_is_hashable() -> None:
    assert len({identify("RB123456785GB"), identify("RB123456785GB")}) == 1


# --- parse_cli_code and to_json --------------------------------------------------------------


def test_parse_cli_code() -> None:
    assert parse_cli_code("a<GS>b\\x1dc<RS>d\\x1e<EOT>\\x04") == f"a{GS}b{GS}c{RS}d{RS}{EOT}{EOT}"
    assert parse_cli_code("plain \\n <FS>") == "plain \\n <FS>"


def test_to_json() -> None:
    assert to_json(identify("RB123456785GB")) == {
        "valid": True,
        "kind": "s10",
        "id": "RB123456785GB",
        "aim": None,
        "raw": "RB123456785GB",
        "error": None,
        "details": {"service": "RB", "country": "GB"},
    }
    with pytest.raises(Rejection) as caught:
        identify("]C0RB123456786GB")
    assert to_json(caught.value) == {
        "valid": False,
        "kind": None,
        "id": None,
        "aim": "]C0",
        "raw": "]C0RB123456786GB",
        "error": "S10 check digit is 6, expected 5",
        "details": {},
    }


@pytest.mark.parametrize(
    ("helper", "value"),
    [
        (s10_check_digit, "1234567"),
        (s10_check_digit, "1234567x"),
        (gs1_mod10, ""),
        (gs1_mod10, "12\u0663"),
        (ups_check_digit, "5R893903575671"),
        (fedex_express_check_digit, "1234567890"),
        (dhl_check_digit, "1_000"),
    ],
)
def test_helpers_refuse_malformed_input(helper: Callable[[str], int], value: str) -> None:
    with pytest.raises(ValueError):
        helper(value)


# --- properties ------------------------------------------------------------------------------

digits = st.text(alphabet=string.digits, min_size=1, max_size=40)
letters = st.text(alphabet=string.ascii_uppercase, min_size=2, max_size=2)
alnum = st.text(alphabet=string.digits + string.ascii_uppercase, min_size=15, max_size=15)


def assert_only_the_check_digit_passes(body: str, check: int, suffix: str = "") -> ParcelId:
    parcel = identify(f"{body}{check}{suffix}")
    for wrong in other_digits(check):
        with pytest.raises(Rejection, match="check digit"):
            identify(f"{body}{wrong}{suffix}")
    return parcel


countries = st.sampled_from(sorted(S10_COUNTRIES))


@given(letters, st.text(alphabet=string.digits, min_size=8, max_size=8), countries)
def test_s10_property(service: str, serial: str, country: str) -> None:
    parcel = assert_only_the_check_digit_passes(service + serial, s10_check_digit(serial), country)
    assert parcel.kind == "s10"
    assert parcel.details == {"service": service, "country": country}
    assert identify(parcel.id.lower()).id == parcel.id


@given(alnum)
def test_ups_property(body: str) -> None:
    parcel = assert_only_the_check_digit_passes("1Z" + body, ups_check_digit(body))
    assert parcel.kind == "ups"
    assert ups_check_digit(body.lower()) == ups_check_digit(body)


@given(st.text(alphabet=string.digits, min_size=17, max_size=17))
def test_sscc_property(body: str) -> None:
    check = gs1_mod10(body)
    assert assert_only_the_check_digit_passes(body, check).kind == "sscc"
    assert assert_only_the_check_digit_passes("00" + body, check).id == body + str(check)
    assert identify(f"]C100{body}{check}{GS}42012345").details["ai_420"] == "12345"


@given(digits)
def test_gs1_mod10_agrees_with_biip(body: str) -> None:
    assert gs1_mod10(body) == gs1_standard_check_digit(body)


@given(st.text(alphabet=string.digits, min_size=11, max_size=11))
def test_fedex_express_property(body: str) -> None:
    parcel = assert_only_the_check_digit_passes(body, fedex_express_check_digit(body))
    assert (parcel.kind, parcel.details["service"]) == ("fedex", "express")


@given(st.text(alphabet=string.digits, min_size=14, max_size=14))
def test_fedex_ground_property(body: str) -> None:
    parcel = assert_only_the_check_digit_passes(body, gs1_mod10(body))
    assert (parcel.kind, parcel.details["service"]) == ("fedex", "ground")


@given(st.text(alphabet=string.digits, min_size=9, max_size=10))
def test_dhl_property(serial: str) -> None:
    assert assert_only_the_check_digit_passes(serial, dhl_check_digit(serial)).kind == "dhl"


@given(
    st.sampled_from(["91", "92", "93", "94", "95"]),
    st.text(alphabet=string.digits, min_size=17, max_size=19).filter(lambda s: len(s) != 18),
    st.sampled_from(["", "42022153\x1d", "420221531234\x1d"]),
)
def test_usps_property(channel: str, rest: str, routing: str) -> None:
    body = channel + rest
    parcel = assert_only_the_check_digit_passes(routing + body, gs1_mod10(body))
    assert (parcel.kind, parcel.id) == ("usps", body + str(gs1_mod10(body)))


def assert_identify_only_rejects(code: str) -> None:
    try:
        parcel = identify(code)
    except Rejection as rejection:
        assert rejection.reason
        assert to_json(rejection)["valid"] is False
    else:
        assert parcel.kind in KINDS
        assert to_json(parcel)["valid"] is True


@given(st.text())
@example("]")
@example("]X9")
@example("]C1" + GS)
@example("[)>\x1e05\x1d")
@example("[)>\x1e05\x1d\x1e\x04")
@example("]C1420" + GS)
@example("]C100" + "\u0661" * 18)
def test_identify_only_ever_rejects_text(code: str) -> None:
    assert_identify_only_rejects(code)


@given(st.binary())
def test_identify_only_ever_rejects_bytes(data: bytes) -> None:
    assert_identify_only_rejects(data.decode("latin-1"))


gs1_pieces = st.lists(
    st.sampled_from(["00", "401", "402", "403", "410", "413", "420", "421", "9", "0", "1", "A"])
    | st.just(GS)
    | st.text(alphabet=string.digits, min_size=1, max_size=18),
    max_size=8,
)


@given(st.sampled_from(["", "]C1", "]d2", "]Q3", "]C0"]), gs1_pieces)
def test_identify_only_ever_rejects_gs1_like_text(aim: str, pieces: list[str]) -> None:
    assert_identify_only_rejects(aim + "".join(pieces))
