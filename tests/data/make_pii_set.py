"""Write pii_set.jsonl: synthetic personal data inside market-text sentences, labeled.

    python tests/data/make_pii_set.py      # rewrites tests/data/pii_set.jsonl

Every sentence and every e-mail address, phone number, URL, @handle, card number and
IBAN below was written for this set (card numbers pass the Luhn check, IBANs the mod-97
check, as real ones do; none belongs to anyone). Each row is
{"text": ..., "spans": [[start, end, type], ...]}; the spans are what `privacy.find`
must return. A third of the rows hold no personal data but the numbers market text is
full of (prices, share counts, dates, tickers, percentages, filings), so a masker that
eats them loses precision. Seeded: the file is the same on every run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).with_name("pii_set.jsonl")

# Market sentences with one {} where a piece of personal data goes.
TEMPLATES = [
    "Shares of Northwind Corp rose 4.2% to $38.10 after the earnings call; questions to {}",
    "For the full Q3 2024 transcript write to {} before Friday.",
    "Brokerage desk says buy $ACME under 12.50, contact {} for the note",
    "Dividend raised to $0.27 a share, payable June 14; investor relations: {}",
    "$GLXY down 7% premarket on guidance cut (details at {})",
    "Analyst day moved to 2025-03-18, RSVP {} by 5 pm ET",
    "Bond desk: 10-year yield at 4.31%, ping {} for the curve deck.",
    "Crude settles at $81.40 a barrel; my desk line is {}",
    "Tip from a reader ({}) says the merger vote slips to Q1.",
    "Fund returned 11.8% YTD vs 9.6% for the S&P 500, per {}",
    "Wire the 2,500 share allocation fee to {} today",
    "Refund for the 3 failed trades went to card {} yesterday",
    "Pay the subscription ($19.99/month) from IBAN {} to keep the alerts",
    "Follow {} for live coverage of the FOMC decision at 2:00 pm",
    "Quarterly call recap: revenue $1.2B, EPS $0.84 vs $0.79 est. More: {}",
    "Short interest hit 23% of float; thread by {}",
    "Press contact {} confirmed the 1-for-10 reverse split.",
    "Chart of $NVDA weekly RSI posted at {}, looks overbought above 70",
    "Margin call on 400 shares of $TSLA, broker said call back on {}",
    "Customer {} reports the app charged the wrong card after the 8-K filing",
]

# Market sentences with no personal data at all: the numbers a masker must leave alone.
CLEAN = [
    "Apple closed at $189.84, up 1.3%, on volume of 52,164,300 shares",
    "Q2 2024 revenue rose 12% year over year to $4,512 million",
    "10-year Treasury yield climbs to 4.62% ahead of the 8:30 am CPI print",
    "$AMD and $INTC both slip 2% as chip stocks give back gains",
    "Fed funds futures price 3 cuts by December 2025",
    "Company files 10-Q on 2024-08-07, reports 1,204,331,000 diluted shares",
    "S&P 500 futures at 5,431.25; Nasdaq 100 at 19,210.50",
    "Stock split 4-for-1 effective 06/10/2024, ticker unchanged",
    "Brent at $84.12, WTI at $79.98 after the 1.5 million barrel draw",
    "Guidance: FY25 EPS $6.10-$6.35 on sales of $92.0-$94.5 billion",
    "Bitcoin trades near 67,250 as ETF inflows reach 1.1 billion",
    "The 2/10 spread inverted by 35 basis points, deepest since 1981",
    "Tesla delivered 466,140 vehicles in Q2, above the 448,350 consensus",
    "Gold hits record 2,450.10 an ounce; silver at 31.25",
    "Order ID 4412 9087 filled at 101.25 for 300 shares",
    "Nikkei 225 ends at 38,920.26 while the Hang Seng slips 0.8%",
    "EUR/USD at 1.0842, GBP/USD at 1.2716 in London trade",
    "Jobless claims 231,000 vs 220,000 expected; continuing claims 1.82 million",
    "Q4 call on 2025-01-29 at 17:00 CET, dial-in details to follow",
    "ISIN US0378331005 and CUSIP 037833100 identify the shares",
    # numbers phonenumbers reads as phone numbers, and words run together (no domains)
    "$ES equilibrium is 3107.50-3108, long above the open",
    "Q2 EPS est. 1.23-4.56-7890 from the three brokers",
    "The company bought back 1 234 567 890 shares in 2023",
    "Revenue 4.155.501.234 EUR, up 3% on the year",
    "CUSIP 037833-10-0 identifies the common stock",
    "Shares fell.Analysts see more downside after the guidance cut",
    "Revenue up 4.the margin too, says the CFO",
    "I was impressed by this player.for the first hours of trading",
]

FIRST = [
    "dana",
    "li.wei",
    "m.okafor",
    "sven",
    "priya_r",
    "j.doe",
    "t.nakamura",
    "ana-lucia",
    "rkhan",
    "omar",
]
DOMAINS = [
    "example.com",
    "mail.example.org",
    "inv-relations.example.net",
    "example.co.uk",
    "desk.example.io",
]
PHONES = [
    "+1 415 555 0132",
    "(212) 555-0199",
    "212-555-0147",
    "+44 20 7946 0958",
    "020 7946 0321",
    "+49 30 901820",
    "+1-646-555-0188",
    "+33 1 70 36 39 50",
    "+61 2 9374 4000",
    "(646) 555-0175",
]
URLS = [
    "https://example.com/q3-transcript",
    "http://ir.example.org/deck.pdf",
    "www.example.net/notes?id=42",
    "https://t.co/Xq3ZpL9kWm",
    "https://bit.ly/3mKt7Qa",
    "https://example.io/charts/nvda-weekly",
    "http://example.com",
    "https://research.example.co.uk/fomc-preview",
    "https://en.wikipedia.org/wiki/Apple_(company)",
    "https://example.com/path?q=a(b)&token=SECRET123",
]
HANDLES = [
    "@marketdesk_jo",
    "@TraderAnna",
    "@chartguy42",
    "@fedwatcher",
    "@ir_northwind",
    "@bondking_ny",
]


def luhn_complete(prefix: str) -> str:
    """Append the check digit that makes `prefix` pass the Luhn test."""
    digits = [int(d) for d in prefix]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return prefix + str((10 - total % 10) % 10)


def iban(country: str, bban: str) -> str:
    """A valid IBAN for `bban` (mod-97 check digits)."""
    moved = bban + country + "00"
    number = int("".join(str(int(c, 36)) for c in moved))
    return f"{country}{98 - number % 97:02d}{bban}"


def group4(s: str) -> str:
    return " ".join(s[i : i + 4] for i in range(0, len(s), 4))


def cards(rng: random.Random) -> list[str]:
    out = []
    for prefix, length in (("4", 16), ("51", 16), ("37", 15), ("6011", 16), ("4", 16)):
        body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
        number = luhn_complete(body)
        out += [number, group4(number), "-".join(group4(number).split())]
    return out


def ibans(rng: random.Random) -> list[str]:
    out = []
    for country, n in (("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14), ("ES", 20)):
        letters = "NWBK" if country in ("GB", "NL") else ""
        digits = "".join(rng.choice("0123456789") for _ in range(n - len(letters)))
        value = iban(country, letters + digits)
        out += [value, group4(value)]
    return out


def build(seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    values = {
        "EMAIL": [f"{rng.choice(FIRST)}@{d}" for d in DOMAINS for _ in range(2)],
        "PHONE": PHONES,
        "URL": URLS,
        "HANDLE": HANDLES,
        "CARD": cards(rng),
        "IBAN": ibans(rng),
    }
    rows = []
    for kind, pool in values.items():
        for i in range(20):
            template = TEMPLATES[(i * 7 + len(kind)) % len(TEMPLATES)]
            value = pool[i % len(pool)]
            start = template.index("{}")
            text = template.replace("{}", value, 1)
            rows.append({"text": text, "spans": [[start, start + len(value), kind]]})
    # Two pieces in one sentence.
    for _ in range(20):
        a, b = rng.sample(sorted(values), 2)
        va, vb = rng.choice(values[a]), rng.choice(values[b])
        text = f"Desk notes for {va} and {vb}: $SPY holds 540 into the close"
        sa = text.index(va)
        sb = text.index(vb, sa + len(va))
        rows.append({"text": text, "spans": [[sa, sa + len(va), a], [sb, sb + len(vb), b]]})
    for text in CLEAN:
        rows.append({"text": text, "spans": []})
    for i, template in enumerate(TEMPLATES):  # the templates filled with plain market words
        rows.append(
            {
                "text": template.replace("{}", ["the desk", "Reuters", "the filing"][i % 3]),
                "spans": [],
            }
        )
    return rows


def main() -> None:
    rows = build()
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
