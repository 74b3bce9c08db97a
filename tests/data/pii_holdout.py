"""Held-out set, written after the scrubber (echolm_middleware/core/pii.py) reached 100% on pii_corpus.py
and evaluated once, with no change to the scrubber afterwards. It deliberately includes formats the draft was not written
for (slash / en-dash card separators, lowercase IBANs, Basic auth, CLI password flags, ...).
Same shapes as pii_corpus: HOLDOUT_POSITIVES (text, kind, secret_substring), HOLDOUT_NEGATIVES.
"""

from __future__ import annotations

import random
import string

from tests.data.pii_corpus import iban_make, iban_ok, iban_spaced, luhn_ok

_rng = random.Random(777)
_A = string.ascii_letters + string.digits


def _t(n: int, alphabet: str = _A) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


HOLDOUT_POSITIVES: list[tuple[str, str, str]] = []


def _p(kind: str, tpl: str, v: str) -> None:
    HOLDOUT_POSITIVES.append((tpl.format(v), kind, v))


for tpl, v in [
    ("Send the deck to {} please.", "john.smith@company.com.au"),
    ("Her address is {} (yes, with the apostrophe).", "o'reilly@example.com"),
    ("Tokyo team: {}", "yamada-taro@sub-domain.example.co.jp"),
    ("New domain: {}", "first.last@example.email"),
    ("From: Jane Doe <{}>", "jane@doe.family"),
    ("Contact:{}", "ops+alerts@status.example.io"),
]:
    _p("email", tpl, v)

for tpl, v in [
    ("Dublin office {}", "+353 1 234 5678"),
    ("Amsterdam: {}", "+31 20 123 4567"),
    ("Madrid: {}", "+34 912 34 56 78"),
    ("Sydney (national format) {}", "(02) 9374 4000"),
    ("Mobil: {}", "0171 1234567"),
    ("Bel me op {}", "06-12345678"),
    ("Moscow: {}", "+7 495 123-45-67"),
    ("Call {} now", "555.123.4567"),
    ("Dotted E.164-ish: {}", "+1.212.555.0123"),
    ("Phone {} is the main line", "212 555 0123"),
    ('<a href="tel:{}">call</a>', "+14155550100"),
    ("UK with trunk in brackets: {}", "+44-20-7946-0958"),
]:
    _p("phone", tpl, v)

for tpl, v in [
    ("Card {} on file", "5454 5454 5454 5454"),
    ("Written with slashes: {}", "4111/1111/1111/1111"),
    ("En dashes from a PDF: {}", "4012\u20138888\u20138888\u20131881"),
    ("CC#{}", "4242424242424242"),
    ("Visa {} exp 01/28", "4000-0000-0000-0002"),
    ("Underscored {}", "5105_1051_0510_5100"),
]:
    assert luhn_ok("".join(c for c in v if c.isdigit())), v
    _p("card", tpl, v)

_ib = [
    ("IT", "X0542811101000000123456", True, "Bonifico su {}"),
    ("BE", "539007547034", True, "Rekening {}"),
    ("CH", "0076201162385295 7".replace(" ", ""), True, "Konto {}"),
    ("AT", "1904300234573201", False, "IBAN {}"),
]
for cc, bban, spaced, tpl in _ib:
    v = iban_make(cc, bban)
    assert iban_ok(v)
    _p("iban", tpl, iban_spaced(v) if spaced else v)
_p("iban", "lower case: {}", iban_spaced("DE89370400440532013000").lower())

for tpl, v in [
    ("SSN#: {}", "432-10-9876"),
    ("social security number {}", "432109876"),
    ("SSN: {}", "521.44.7302"),
]:
    _p("ssn", tpl, v)

_p("stripe", "test key {}", "sk_test_" + _t(24))
_p("github", "oauth token {}", "gho_" + _t(36))
_p("openai", "service account key {}", "sk-svcacct-" + _t(60, _A + "-_"))
_p(
    "pem_private_key",
    "{}",
    "-----BEGIN DSA PRIVATE KEY-----\nMIIBuwIBAAKBgQ" + _t(50, _A + "+/") + "\n-----END DSA PRIVATE KEY-----",
)
_p(
    "pem_private_key",
    "pgp:\n{}",
    "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF"
    + _t(60, _A + "+/")
    + "\n=Ab12\n-----END PGP PRIVATE KEY BLOCK-----",
)
_p("url_password", "https://admin:{}@intranet.example.com/", "pa:ss:word9")
_p("basic_auth", "Authorization: Basic {}", "dXNlcjpjb3JyZWN0aG9yc2U=")
_p("assigned_secret", "passwd: {}", "hunter22hunter")
_p("assigned_secret", "DB_PASS={}", "Zq8!vR2#mK")
_p(
    "assigned_secret",
    "SECRET_KEY = '{}'",
    "django-insecure-" + _t(40, string.ascii_lowercase + string.digits + "!@#$%^&*(-_=+)"),
)
_p("cli_password", "mysql -u root --password {} -h db", "S3cr3tPassw0rd")
_p("cli_password", "mysql -u root -p{} app", "S3cr3tPassw0rd2")
_p(
    "assigned_secret",
    "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={};EndpointSuffix=core.windows.net",
    _t(86, _A + "+/") + "==",
)

HOLDOUT_NEGATIVES: list[str] = [
    "ISBN 978-1-4028-9462-6 is on the back cover.",
    "Patent US 7,654,321 covers the hinge.",
    "Build 20240115.3 passed all checks.",
    "See RFC 7231 section 6.5.4 for HTTP 404.",
    "Postgres listens on port 5432 by default.",
    "Run chmod 0755 on the script.",
    "India is UTC+05:30 and California GMT-0800.",
    "Use a tolerance of 1e-9 and a mask of 0x7fffffff.",
    "We shipped 3,141,592 packages.",
    "The survey covered 1999-2024.",
    "Press the +1 button to upvote.",
    "Lat 51.5074, Lon -0.1278.",
    "CVE-2024-3094 affected xz 5.6.0 and 5.6.1.",
    "Kubernetes v1.29.0 drops the flag.",
    "Resolve 8.8.8.8 and 1.1.1.1 as fallbacks.",
    "Frames at 0x0040 0x0080 0x00c0 were corrupted.",
    "Write to user@localhost for local delivery.",
    "@app.route('/users/<int:user_id>')",
    "pip install requests==2.31.0 urllib3==2.2.1",
    "npm i left-pad@1.3.0 @angular/core@17.0.1",
    "ssh deploy@192.168.10.20 'uptime'",
    "ssh deploy@prod-server.internal 'uptime'",
    "The context window is 128000 tokens.",
    "Passwords must have 12 or more characters.",
    "secret_santa_list = []",
    "api_key_header = 'X-API-Key'",
    "token_type: bearer",
    "Table: 12 15 18 21 24 27 30 33 36 39",
    "Lottery numbers 04 11 23 35 42 49",
    "Coordinates 40 44 54 N 73 59 08 W",
    "Dimensions 1200 x 800 x 600 mm",
    "Invoice 2024 0001 0002 0003 settled.",
    "Timestamp 2024-01-15 10:30:00.123456",
    'Stack: File "app.py", line 1234, in handler',
    "The phone prefix for the UK is +44.",
    "Enter the 6-digit code 482913 to continue.",
    "Order 4400-2210-99 ships Monday.",
    "Temperature range -40 to 85 C.",
    "Barcode 5 012345 678900",
    "SWIFT/BIC DEUTDEFF500",
]
