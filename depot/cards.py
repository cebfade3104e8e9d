"""Failure cards ("sorry we missed you"): the code on the card, and where it leads.

After a failed attempt whose reason is in `parcel.codes.CARD_LEFT_FOR`, the van's
`delivery_failed` carries `card`: eight Crockford base32 characters, written "XXXX-XXXX"
(docs/DELIVERY.md). The projection records the SHA-256 of the normalised code -> the parcel
(`remember_card`, `depot.store.outcomes`), as the tracking links keep only their digest
(`depot.customer`); the customer's notice of the attempt carries the code and `card_url`
(`{public_url}/card`), the merchant's only `card_url`. On the public page `/card`
(`depot.web.pages.card`) the customer types the code and is sent (303) to the parcel's own
tracking page (`/t/{token}`), where the usual choices (delivery again, more time in a locker)
are offered.

The code alone opens the page: the card is all the customer may hold (no notice, no e-mail),
and a postcode or surname would have to be typed on a phone at the door too; what the page
shows is what the tracking link shows, which a found card already told about. Guessing is
what is guarded instead (`CardTries`): 40 bits of code, five wrong codes per client address
and then a cool-down, and a limit on how often one card is used, so a script cannot walk the
code space from one address nor hammer a parcel's page through a card it found.

A code is matched case-insensitively, ignoring spaces and hyphens, with O read as 0 and I, L
as 1 (what people misread on a handwritten card). Every card of a parcel keeps working while
its journey is open; once it has ended (delivered, picked up, returned to its sender) the
page says so and leads nowhere.

Must never: store a card code as given outside the van's own event (the projection keeps the
digest, the timeline the code for the operators), send the code in the merchant's copy, or
tell a wrong code apart from a cool-down by anything but the cool-down's message.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from depot.errors import DepotError
from depot.keys import DepotKeys
from depot.store import Conn, book
from depot.store import outcomes as table
from parcel.cards import formatted, normal_card_code

__all__ = [
    "CARD_PATH",
    "CARD_URL",
    "CardAnswer",
    "CardTries",
    "CardUnreadable",
    "UnknownCard",
    "card_answer",
    "card_digest",
    "card_url",
    "formatted",
    "normalise",
    "remember_card",
]

CARD_PATH = "/card"
CARD_URL = "card_url"  # the key of the page's address in a notice of a failed attempt
# The states in which the card's choices are what the customer came for.
_WAITING = frozenset({"attempted", "at_depot"})


class CardUnreadable(DepotError):
    """What was typed cannot be a card's code (not eight letters and digits)."""

    def __init__(self) -> None:
        super().__init__("a card's code has 8 letters and digits, like 7KQ4-M2XP")


class UnknownCard(DepotError):
    """No card the depot knows has this code."""

    def __init__(self) -> None:
        super().__init__("no card we left has this code; check it on the card")


def normalise(text: str) -> str | None:
    """The code in `text` as eight upper-case Crockford characters, or None
    (parcel.cards owns how a person writes a code back)."""
    return normal_card_code(text)


def card_digest(code: str) -> str:
    """What the database keeps of a normalised code: its SHA-256, hex."""
    return hashlib.sha256(code.encode("ascii")).hexdigest()


def card_url(base_url: str | None) -> str:
    """The card page's address in a notice: `{base_url}/card`, or the path alone."""
    return f"{base_url.rstrip('/')}{CARD_PATH}" if base_url else CARD_PATH


def remember_card(
    conn: Conn, text: object, parcel: str, event_uuid: str, now_ns: int
) -> str | None:
    """Record a card a van left (in the caller's transaction, the projection's); the code as
    the card shows it, or None when the van's `card` is not a code."""
    code = normalise(text) if isinstance(text, str) else None
    if code is None:
        return None
    if not table.remember_card(conn, card_digest(code), parcel, event_uuid, now_ns):
        known = table.card_parcel(conn, card_digest(code))
        if known != parcel:
            # 1 in 2^40 per pair: the first parcel keeps the code, this card leads nowhere.
            return None
    return formatted(code)


@dataclass(frozen=True)
class CardAnswer:
    """Where a card leads: its parcel, the parcel's state and, while its journey is open, the
    tracking page's path (`path`) with a line for the customer (`words`)."""

    parcel: str
    state: str
    words: str
    path: str | None = None
    digest: str = ""

    def __repr__(self) -> str:
        """Without the path: it holds the tracking link's token."""
        return f"CardAnswer(parcel={self.parcel!r}, state={self.state!r})"


def card_answer(conn: Conn, keys: DepotKeys, text: str, now_ns: int) -> CardAnswer:
    """Where the card with code `text` leads now. CardUnreadable for text that is no code,
    UnknownCard for a code no card has. The tracking link's digest is recorded (the caller's
    transaction) so the page finds the parcel; a depot without a sealing key gives no path."""
    # The parcel book records cards as it projects (`depot.outcomes`), and the customer's
    # page imports the book: imported here, the three modules load in any order.
    from depot.customer import STATE_WORDS, record_link, tracking_path
    from depot.tracking import FINAL_STATES

    code = normalise(text)
    if code is None:
        raise CardUnreadable()
    digest = card_digest(code)
    parcel = table.card_parcel(conn, digest)
    state = book.state_of(conn, parcel) if parcel is not None else None
    if parcel is None or state is None:
        raise UnknownCard()
    said = STATE_WORDS.get(state, state.replace("_", " ")).lower()
    if state in FINAL_STATES:
        words = (
            f"The parcel of this card has reached its end: {said}. "
            "The card's code is no longer in use."
        )
        return CardAnswer(parcel, state, words, None, digest)
    token = record_link(conn, keys, parcel, now_ns)
    if state in _WAITING:
        words = "Here is the parcel of your card: choose below what happens to it next."
    else:
        words = f"The parcel of your card is no longer waiting for a choice: {said}."
    return CardAnswer(parcel, state, words, tracking_path(token) if token else None, digest)


class CardTries:
    """How often the card page may be asked, per client address and per card.

    A client address that typed `max_wrong` codes no card has in `window_s` is refused every
    lookup for `cooldown_s` from the last of them (right or wrong: a cool-down that let a right
    code through would tell a guesser when it hit). A card found `max_uses` times in
    `window_s` is refused for `cooldown_s` too. The time is the real monotonic clock (a
    guesser's speed is a fact about the real network, as a webhook's replay window is), and
    the counts live in the web port's process, which alone serves the page: a restart
    forgets them, and at most `max_entries` addresses are remembered (the oldest go first).
    """

    def __init__(
        self,
        *,
        max_wrong: int = 5,
        max_uses: int = 20,
        window_s: float = 900.0,
        cooldown_s: float = 900.0,
        max_entries: int = 10_000,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_wrong = max_wrong
        self.max_uses = max_uses
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self.max_entries = max_entries
        self._now = now
        self._lock = threading.Lock()
        # key -> [count, window start, cooling until]
        self._seen: dict[str, list[float]] = {}

    def wait_s(self, client: str, digest: str | None = None) -> float:
        """Seconds until `client` (and the card of `digest`, if given) may ask again; 0: now."""
        now = self._now()
        with self._lock:
            keys = [f"client:{client}"] + ([f"card:{digest}"] if digest else [])
            return max((self._cooling(k, now) for k in keys), default=0.0)

    def wrong(self, client: str) -> None:
        """`client` typed a code no card has."""
        self._count(f"client:{client}", self.max_wrong)

    def used(self, digest: str) -> None:
        """A card was found."""
        self._count(f"card:{digest}", self.max_uses)

    def _cooling(self, key: str, now: float) -> float:
        entry = self._seen.get(key)
        return max(0.0, entry[2] - now) if entry is not None else 0.0

    def _count(self, key: str, limit: int) -> None:
        now = self._now()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None or (now - entry[1] > self.window_s and entry[2] <= now):
                entry = self._seen[key] = [0.0, now, 0.0]
            entry[0] += 1
            if entry[0] >= limit:
                entry[2] = now + self.cooldown_s
                entry[0], entry[1] = 0.0, now
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        while len(self._seen) > self.max_entries:
            self._seen.pop(next(iter(self._seen)))
