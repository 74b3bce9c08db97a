"""Labelled corpus for evaluating PII / secret scrubbers.

POSITIVES: list of (text, kind, secret_substring). Each text contains exactly one item of personal
data or one secret; `secret_substring` is that item verbatim as it appears in `text`.
NEGATIVES: list of texts in which nothing should be flagged.

All card numbers are Luhn-valid, all IBANs pass ISO 7064 mod 97-10 (and the French RIB key, the
Spanish CCC control digits and the Dutch 11-proof are computed), SSNs respect the SSA area/group/serial
rules. Tokens and keys are synthetic but have the real format (prefix, alphabet, length); they are
generated from a fixed seed so the corpus is reproducible. Nothing here is a real credential.
"""

from __future__ import annotations

import base64
import random
import string

_rng = random.Random(20240115)
_ALNUM = string.ascii_letters + string.digits


def _tok(n: int, alphabet: str = _ALNUM) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


# ---------------------------------------------------------------- checksums used to build the corpus
def luhn_complete(partial: str) -> str:
    """Append the Luhn check digit to `partial` (digits only)."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:  # these positions are doubled once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return partial + str((10 - total % 10) % 10)


def luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _iban_numeric(s: str) -> int:
    return int("".join(str(int(c, 36)) for c in s))


def iban_make(country: str, bban: str) -> str:
    check = 98 - _iban_numeric(bban + country + "00") % 97
    return f"{country}{check:02d}{bban}"


def iban_ok(iban: str) -> bool:
    s = iban.replace(" ", "")
    return _iban_numeric(s[4:] + s[:4]) % 97 == 1


def iban_spaced(iban: str) -> str:
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


def fr_rib_key(bank: str, branch: str, account: str) -> str:
    # numeric account only (letters would be mapped first)
    return f"{97 - (89 * int(bank) + 15 * int(branch) + 3 * int(account)) % 97:02d}"


def es_ccc_digits(bank: str, branch: str, account: str) -> str:
    weights = [1, 2, 4, 8, 5, 10, 9, 7, 3, 6]

    def digit(ten: str) -> str:
        d = 11 - sum(int(c) * w for c, w in zip(ten, weights, strict=True)) % 11
        return {11: "0", 10: "1"}.get(d, str(d))

    return digit("00" + bank + branch) + digit(account)


def nl_account_11proof(nine: str) -> str:
    """Complete a 9-digit prefix into a 10-digit Dutch account number passing the 11-proof."""
    for last in "0123456789":
        acct = nine + last
        if sum(int(c) * w for c, w in zip(acct, range(10, 0, -1), strict=True)) % 11 == 0:
            return acct
    raise ValueError(nine)


# ---------------------------------------------------------------- positives
POSITIVES: list[tuple[str, str, str]] = []


def _add(kind: str, template: str, value: str) -> None:
    POSITIVES.append((template.format(value), kind, value))


# --- email (15)
for tpl, v in [
    ("Please send the signed contract to {} before Friday.", "jane.doe@example.com"),
    ("Newsletter replies go to {} and are filtered automatically.", "j.doe+newsletter@mail.example.co.uk"),
    ("My work address is {}, my personal one is private.", "first_last@sub.domain.example.org"),
    ("CONTACT: {} FOR ALL BILLING ISSUES", "BILLING.TEAM@EXAMPLE.COM"),
    ("User {} reported the crash at 10:42.", "user123@example.io"),
    ("Write to {} if the invoice looks wrong.", "support@my-company.de"),
    ("The shortest one we have on file is {}.", "a@b.co"),
    ("Professor Lee ({}) supervises the thesis.", "firstname.lastname@dept.university.edu"),
    ("Forwarded from <{}> on Monday.", "alice_smith92@yahoo.fr"),
    ("Click mailto:{} to open your mail client.", "dave@example.org"),
    ("Her alias {} still receives mail.", "x-y_z%tag@example.travel"),
    ("Alerts come from {} every night.", "admin@server01.prod.example.com"),
    ("Reply-To: {}", "carol.o.brien@example.net"),
    ("Is {} a valid address for the museum?", "curator@example.museum"),
    ("The IDN mailbox {} also works.", "info@xn--bcher-kva.example"),
]:
    _add("email", tpl, v)

# --- phone (33)
for tpl, v in [
    ("You can reach the front desk at {} during office hours.", "(212) 555-0123"),
    ("Call me back on {} after six.", "212-555-0187"),
    ("Fax: {}", "212.555.0199"),
    ("Our US hotline is {} (toll free).", "+1 212 555 0147"),
    ("Dial {} for the west coast office.", "+1-415-555-0132"),
    ("Ring {} to reorder.", "1-800-555-0199"),
    ("His cell is {}, text first.", "(415) 555 0100"),
    ("Stored in E.164 as {} in the CRM.", "+12125550123"),
    ("Direct line {} ext. 12", "415.555.0175"),
    ("My UK mobile is {}.", "+44 7911 123456"),
    ("WhatsApp: {}", "+447911123456"),
    ("Locally that is {} from a UK phone.", "07911 123456"),
    ("The London office answers on {}.", "+44 20 7946 0958"),
    ("Domestic callers use {} instead.", "020 7946 0958"),
    ("Reception: {}", "+44 (0)20 7946 0321"),
    ("The Berlin number is {}.", "+49 30 901820"),
    ("Berlin, Tel. {} (Zentrale)", "+49 (0)30 901820"),
    ("Von Deutschland aus: {}", "030 901820"),
    ("Handy: {}", "+49 151 23456789"),
    ("Signal: {}", "+4915123456789"),
    ("Appelez le {} pour un rendez-vous.", "01 23 45 67 89"),
    ("Depuis l'étranger : {}", "+33 1 23 45 67 89"),
    ("Mon portable : {}", "06 12 34 56 78"),
    ("International: {}", "+33 6 12 34 56 78"),
    ("SMS to {} confirms the booking.", "+33612345678"),
    ("Contact Ravi on {} for the Mumbai visit.", "+91 98765 43210"),
    ("Alternate: {}", "+91-98765-43210"),
    ("From within India dial {}.", "98765 43210"),
    ("Sydney office: {}", "+61 2 9374 4000"),
    ("Tokyo branch: {}", "+81 3-1234-5678"),
    ("São Paulo: {}", "+55 11 91234-5678"),
    ("From Europe dial {} to reach him.", "0044 7911 123456"),
    ("The emergency contact is {} (her husband).", "(646) 555-0162"),
]:
    _add("phone", tpl, v)


# --- credit cards (20), all Luhn-valid
def _fmt(num: str, groups: list[int], sep: str) -> str:
    out, i = [], 0
    for g in groups:
        out.append(num[i : i + g])
        i += g
    return sep.join(out)


_CARDS = [
    # (number or 15/13/18-digit prefix to complete, grouping)
    ("4111111111111111", [4, 4, 4, 4]),  # Visa test number
    ("4012888888881881", [4, 4, 4, 4]),  # Visa
    ("4242424242424242", [4, 4, 4, 4]),  # Visa
    (luhn_complete("453914880343646"), [4, 4, 4, 4]),  # Visa
    (luhn_complete("400005665566555"), [4, 4, 4, 4]),  # Visa debit-style
    (luhn_complete("4916338506082"[:12]), [4, 4, 5]),  # 13-digit Visa
    ("5555555555554444", [4, 4, 4, 4]),  # Mastercard
    ("5105105105105100", [4, 4, 4, 4]),  # Mastercard
    ("2223003122003222", [4, 4, 4, 4]),  # Mastercard 2-series
    (luhn_complete("520082828282821"), [4, 4, 4, 4]),  # Mastercard
    ("378282246310005", [4, 6, 5]),  # Amex
    ("371449635398431", [4, 6, 5]),  # Amex
    (luhn_complete("34000000000000"), [4, 6, 5]),  # Amex
    ("6011111111111117", [4, 4, 4, 4]),  # Discover
    ("6011000990139424", [4, 4, 4, 4]),  # Discover
    (luhn_complete("644564456445644"), [4, 4, 4, 4]),  # Discover 644-649
    ("3530111333300000", [4, 4, 4, 4]),  # JCB
    ("30569309025904", [4, 6, 4]),  # Diners 14
    (luhn_complete("650000000000000"), [4, 4, 4, 4]),  # Discover 65
    (luhn_complete("412345678901234567"), [4, 4, 4, 4, 3]),  # 19-digit Visa
]
_CARD_TEMPLATES = [
    ("Charge it to my Visa {}, expiry 09/27.", " "),
    ("card: {}", "-"),
    ("Number on the card is {} and CVV is on the back.", "."),
    ("Use {} for the deposit.", ""),
    ("My credit card {} was declined twice.", " "),
    ("Billing card {} (personal)", "-"),
    ("MC {} exp 11/26", " "),
    ("Card no. {} please refund", "."),
    ("pay with {} now", ""),
    ("Stored PAN {} must be masked", "-"),
    ("Amex {} is the corporate card.", " "),
    ("Amex: {}", "-"),
    ("Corporate card {}.", ""),
    ("Discover card {} works online.", " "),
    ("Discover {} expired.", "."),
    ("Another Discover: {}", "-"),
    ("JCB {} for the Tokyo trip.", " "),
    ("Diners Club {} is old but valid.", " "),
    ("Try {} instead.", "  "),  # double space between groups
    ("Long PAN {} from the issuer.", " "),
]
assert len(_CARDS) == len(_CARD_TEMPLATES)
for (num, groups), (tpl, sep) in zip(_CARDS, _CARD_TEMPLATES, strict=True):
    assert luhn_ok(num), num
    _add("card", tpl, _fmt(num, groups, sep))

# --- IBAN (14), checksum-valid, printed with and without spaces
_ibans = [
    "DE89370400440532013000",  # standard example
    iban_make("DE", "10070000" + "0123456789"),
    iban_make("DE", "50010517" + "5407324931"),
    "GB82WEST12345698765432",  # standard example
    iban_make("GB", "NWBK" + "601613" + "31926819"),
    iban_make("GB", "BARC" + "200000" + "55779911"),
    "FR1420041010050500013M02606",  # standard example
    iban_make("FR", "30006" + "00001" + "12345678901" + fr_rib_key("30006", "00001", "12345678901")),
    "NL91ABNA0417164300",  # standard example
    iban_make("NL", "RABO" + nl_account_11proof("030016701")),
    "ES9121000418450200051332",  # standard example
    iban_make("ES", "2100" + "0813" + es_ccc_digits("2100", "0813", "0200123456") + "0200123456"),
    iban_make("DE", "37040044" + "0532013001"),
    iban_make("GB", "MIDL" + "400515" + "12345678"),
]
_IBAN_TEMPLATES = [
    ("Please wire the refund to IBAN {} by Monday.", True),
    ("IBAN: {}", False),
    ("Kontoverbindung {} (Sparkasse)", True),
    ("Bank details: {}, BIC WESTGB2L", True),
    ("Pay into {} with reference 4471.", False),
    ("My account {} is in London.", True),
    ("RIB / IBAN : {}", True),
    ("Virement sur {} merci.", False),
    ("Rekeningnummer {} op naam van J. de Vries.", True),
    ("Send it to {}", False),
    ("Cuenta {} en Barcelona.", True),
    ("IBAN {} para la nómina.", False),
    ("new account {}", False),
    ("Standing order from {} monthly.", True),
]
for iban, (tpl, spaced) in zip(_ibans, _IBAN_TEMPLATES, strict=True):
    assert iban_ok(iban), iban
    _add("iban", tpl, iban_spaced(iban) if spaced else iban)

# --- US SSN (10): area 001-665/667-899, group 01-99, serial 0001-9999; no famous sample numbers
for tpl, v in [
    ("My social security number is {}.", "536-22-1947"),
    ("SSN: {}", "401-78-3362"),
    ("Applicant SSN {} verified.", "219-45-8810"),
    ("The form lists {} as her SSN.", "078-12-4456"),
    ("ssn={}", "771-09-2284"),
    ("Employee 4471, SSN {}, start date pending.", "312-64-0099"),
    ("Social Security No. {}", "650-31-7415"),
    ("SSN {} (spaces as printed on the card)", "455 82 1903"),
    ("Enter {} in box 2.", "889-01-5678"),
    ("Tax ID (SSN) {} on file.", "142-57-3306"),
]:
    _add("ssn", tpl, v)

# --- secrets
_aws_id = "AKIA" + _tok(16, string.ascii_uppercase + string.digits)
_aws_id2 = "ASIA" + _tok(16, string.ascii_uppercase + string.digits)
_aws_secret = _tok(40, _ALNUM + "/+")
_aws_secret2 = _tok(40, _ALNUM + "/+")
_add("aws_key_id", "The CI uses access key {} for the deploy role.", "AKIAIOSFODNN7EXAMPLE")
_add("aws_key_id", "aws_access_key_id = {}", _aws_id)
_add("aws_key_id", "Temporary credentials: {} (expires in 1h)", _aws_id2)
_add("aws_secret", "aws_secret_access_key = {}", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
_add("aws_secret", 'export AWS_SECRET_ACCESS_KEY="{}"', _aws_secret)
_add("aws_secret", '{{"AccessKeyId": "AKIAEXAMPLE", "SecretAccessKey": "{}"}}', _aws_secret2)

_add("stripe", "Stripe secret key: {}", "sk_live_" + _tok(24))
_add("stripe", "STRIPE_KEY={}", "sk_live_" + _tok(99))
_add("stripe", "The restricted key {} only reads charges.", "rk_live_" + _tok(24))
_add("huggingface", "Log in with huggingface-cli login --token {}", "hf_" + _tok(34, string.ascii_letters))
_add("huggingface", "HF_TOKEN={}", "hf_" + _tok(34, string.ascii_letters))
_add("gitlab", "My GitLab token is {} please don't share.", "glpat-" + _tok(20, _ALNUM + "-_"))
_add("gitlab", "git clone https://oauth2:{}@gitlab.example.com/group/repo.git", "glpat-" + _tok(20, _ALNUM))
_add("github", "export GITHUB_TOKEN={}", "ghp_" + _tok(36))
_add("github", "fine-grained PAT: {}", "github_pat_" + _tok(22) + "_" + _tok(59))
_add("github", "the Actions token {} leaked in the log", "ghs_" + _tok(36))
_add(
    "slack",
    "Bot token {} posts to #alerts.",
    "xoxb-" + _tok(12, string.digits) + "-" + _tok(13, string.digits) + "-" + _tok(24),
)
_add(
    "slack",
    "SLACK_USER_TOKEN: {}",
    "xoxp-"
    + _tok(12, string.digits)
    + "-"
    + _tok(12, string.digits)
    + "-"
    + _tok(13, string.digits)
    + "-"
    + _tok(32, "0123456789abcdef"),
)
_add("openai", "OPENAI_API_KEY={}", "sk-proj-" + _tok(74, _ALNUM + "-_") + "A")
_add("openai", "Here is my key {} can you check why it fails?", "sk-" + _tok(20) + "T3BlbkFJ" + _tok(20))
_add("openai", "Anthropic key: {}", "sk-ant-api03-" + _tok(93, _ALNUM + "-_") + "AA")
_add("google_api", "Maps key {} restricted to our domain.", "AIza" + _tok(35, _ALNUM + "-_"))
_add("google_api", 'const firebaseConfig = {{ apiKey: "{}" }};', "AIza" + _tok(35, _ALNUM + "-_"))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_jwt1 = ".".join(
    [
        _b64url(b'{"alg":"HS256","typ":"JWT"}'),
        _b64url(b'{"sub":"1234567890","name":"Jane Doe","iat":1516239022}'),
        _b64url(bytes(_rng.randrange(256) for _ in range(32))),
    ]
)
_jwt2 = ".".join(
    [
        _b64url(b'{"alg":"RS256","kid":"k1","typ":"JWT"}'),
        _b64url(b'{"iss":"https://auth.example.com","sub":"u-42","exp":1893456000}'),
        _b64url(bytes(_rng.randrange(256) for _ in range(256))),
    ]
)
_add("jwt", "Authorization header was: Bearer {}", _jwt1)
_add("jwt", "Decode this token for me: {}", _jwt2)
_add("bearer", "curl -H 'Authorization: Bearer {}' https://api.example.com/v1/me", _tok(40, _ALNUM + "._-"))


def _pem(label: str, nbytes: int, headers: str = "") -> tuple[str, str]:
    body = base64.b64encode(bytes(_rng.randrange(256) for _ in range(nbytes))).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    block = f"-----BEGIN {label}-----\n{headers}" + "\n".join(lines) + f"\n-----END {label}-----"
    return block, lines[1]


for tpl, label, n, hdr in [
    ("Here is the deploy key, please fix the format:\n{}\nThanks!", "RSA PRIVATE KEY", 600, ""),
    ("id_ed25519 contents:\n{}", "OPENSSH PRIVATE KEY", 300, ""),
    ("key.pem:\n{}\n", "PRIVATE KEY", 480, ""),
    (
        "Encrypted key below\n{}",
        "RSA PRIVATE KEY",
        600,
        "Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,3F17F5316E2BAC89\n\n",
    ),
    ("EC key for signing: {}", "EC PRIVATE KEY", 120, ""),
]:
    block, secret_line = _pem(label, n, hdr)
    POSITIVES.append((tpl.format(block), "pem_private_key", secret_line))

for tpl, v in [
    ("Connect with https://deploy:{}@repo.example.com/simple/ in pip.conf", "Zx9!pq77wLm"),
    ("DATABASE_URL=postgres://admin:{}@db:5432/x", "s3cret"),
    ("mysql://root:{}@10.0.0.5:3306/app is the DSN", "Tr0ub4dor&3"),
    ("REDIS_URL=redis://:{}@cache.internal:6379/0", "p4ssw0rd2024"),
    ("amqp://guest:{}@rabbit.local:5672/ is what the worker uses", "gU3st-pw-91"),
    ("MONGO_URI=mongodb+srv://svc_user:{}@cluster0.example.mongodb.net/prod", "Xy9%21pass"),
    ("ftp://alice:{}@ftp.example.org/pub/", "wonderland42"),
]:
    _add("url_password", tpl, v)

for tpl, v in [
    ('db_password = "{}"', "Summer2024!x"),
    ("PASSWORD={}", "hunter2hunter2"),
    ('{{"client_secret": "{}"}}', _tok(32, _ALNUM)),
    ("api_key: {}", _tok(32, "0123456789abcdef")),
]:
    _add("assigned_secret", tpl, v)

# ---------------------------------------------------------------- negatives
NEGATIVES: list[str] = [
    # years, counts, prices
    "The Treaty of Versailles was signed in 1919.",
    "Between 1939-1945 about 70 million people served.",
    "Revenue grew from 2019 to 2023 by 45 %.",
    "The years 1990 2000 2010 2020 mark each census.",
    "The laptop costs $1,234.56 including tax.",
    "Le prix est de 2.499,00 € TTC.",
    "Transfer 1 500 000 EUR to the escrow account.",
    "Population of the city: 8 336 817 (2020 estimate).",
    "We sold 1,000,000 units in Q3.",
    # versions, dates, times
    "Upgrade to version 1.2.3 before the release.",
    "Python 3.11.7 and Node v20.11.1 are required.",
    "Tag v2.14.3-beta.4 was pushed yesterday.",
    "The meeting is on 2024-01-15 at 10:30.",
    "Invoice date 15/01/2024, due 14.02.2024.",
    "Logged at 2024-01-15T10:30:45.123Z by the scheduler.",
    "The store is open 09:00-17:30, Monday to Friday.",
    "Unix time 1700000000 is in November 2023.",
    # identifiers
    "ISBN 978-0-306-40615-7 is the second edition.",
    "Old ISBN-10: 0-306-40615-2.",
    "Order #2024-0815-7731 has shipped.",
    "Order ID 100234567 is delayed.",
    "Case number 2023-CV-01234 was dismissed.",
    "Fixed in commit 3f786850e387550fdab836ed7e6dc881de23001b on main.",
    "Request id 123e4567-e89b-12d3-a456-426614174000 failed.",
    "sha256 digest 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "Tracking number 1Z 999 AA1 01 2345 6784 via UPS.",
    "SKU 88-1234-567 is out of stock.",
    "Room 1204, building 7, floor 12.",
    "ZIP 94107, or ZIP+4 94107-1234.",
    "Flight LH 400 departs from gate A 38.",
    # numbers that fail the checksums / rules
    "Reference 4111 1111 1111 1112 fails the Luhn check.",
    "Account 1234 5678 9012 3456 is a placeholder.",
    "The IBAN DE89 3704 0044 0532 0130 01 has a bad checksum.",
    "Example SSN 000-12-3456 is never issued.",
    "666-45-1234 is not a valid SSN either.",
    "912-34-5678 is in the ITIN range, not an SSN.",
    # math, measurements, scores
    "Pi is roughly 3.14159 26535 89793.",
    "e = 2.71828 and sqrt(2) = 1.41421.",
    "1/3 + 2/3 = 1, and 10 - 7 = 3.",
    "The trail is 12 345 km long.",
    "The CPU runs at 5.9 GHz with 1 024 MB of cache.",
    "Coordinates: 48.8584, 2.2945 (Eiffel Tower).",
    "They won 3-2 after extra time; the series stands at 21-18 21-15.",
    "Final score 102-99 in overtime.",
    "Set max_tokens to 2048 and retry after 30 s.",
    # network things that are not personal data
    "Ping 192.168.1.254 or 10.0.0.1 to test the LAN.",
    "The broadcast address is 255.255.255.0 here.",
    "IPv6 loopback is ::1 and link-local starts fe80::1ff:fe23:4567:890a.",
    "MAC 00:1A:2B:3C:4D:5E belongs to the printer.",
    # URLs without credentials
    "See https://docs.python.org/3/library/re.html for details.",
    "Open https://example.com:8443/path?q=1&page=2 in a browser.",
    "Download ftp://ftp.example.org/pub/file-1.2.3.tar.gz now.",
    "The API runs at http://localhost:8000/api/v1/items.",
    "Clone git@github.com:example-org/repo.git to start.",
    # prose with trigger words
    "The secret ingredient is cinnamon, not vanilla.",
    "Reset your password using the link we emailed you.",
    "Bearer instruments were popular in the 1980s.",
    "An @decorator and user@localhost are code, not addresses.",
    "Meet @ 5pm; @here please review the draft.",
    "The prefix AKIA identifies long-term AWS keys.",
    "Read the sk-learn-compatible-estimators-guide first.",
    "Token limits apply: 4096 tokens per request.",
    "Please summarize the following article in three bullet points.",
    "Translate 'good morning' into French and Spanish.",
    # code snippets
    "for i in range(10):\n    print(i * 2)",
    'password = os.environ["DB_PASSWORD"]',
    'secret_key = get_secret("prod")',
    'config = {"password_min_length": 12, "max_tokens": 4096}',
    "SELECT id, email FROM users WHERE id = 42 LIMIT 10;",
    "docker run -p 8080:80 -e MODE=prod nginx:1.25",
    "curl -H 'Accept: application/json' https://api.example.com/v1/items?page=2",
    "const API_URL = process.env.API_URL;",
    "model = hf_hub_download(repo_id='org/model', filename='weights.bin')",
    "result = weights@inputs.T + bias",
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ3p8\n-----END CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    "x = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
    "kubectl scale deployment web --replicas=3",
]


def _self_check() -> None:
    for text, kind, secret in POSITIVES:
        assert secret in text, (kind, secret)
        assert text.count(secret) == 1, (kind, secret)


_self_check()
