"""Which lorebook entries fire for a conversation, and why.

Keys match case-insensitively as whole words or phrases (`case_sensitive`, or SillyTavern's
`extensions.match_whole_words: false`, change that), in the newest `scan_depth` messages (default 2, as in
SillyTavern). `use_regex` keys, and SillyTavern's `/pattern/flags` keys, are regular expressions run with a
time limit per search and per scan: a catastrophic pattern costs at most that long and never fires. A
`selective` entry also needs its secondary keys (SillyTavern's `selectiveLogic`: and-any, not-all, not-any,
and-all); a `constant` one fires without keys; a disabled one never. Content decorators (`@@depth 2`,
`@@role user`, `@@scan_depth 4`, `@@activate`, `@@dont_activate`, `@@additional_keys`, `@@exclude_keys`,
`@@position`) are applied and removed from the text, with `@@@` fallbacks.

Where a fired entry goes: before or after the character definition in the system message, or as a message
at a depth among the turns (a decorator, or SillyTavern's `extensions.position` 4 with `depth` and `role`).
The budget is applied by the prompt builder (prompt.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import regex

from charbot.lorebook import LoreEntry, Lorebook

DEFAULT_SCAN_DEPTH = 2
REGEX_TIMEOUT = 0.05  # seconds one regex key may search one message
SCAN_REGEX_BUDGET = 0.25  # seconds all regex keys of one scan may take together
MAX_PATTERN = 500
ROLES = {0: "system", 1: "user", 2: "assistant", "system": "system", "user": "user", "assistant": "assistant"}
AND_ANY, NOT_ALL, NOT_ANY, AND_ALL = range(4)
_ST_REGEX = re.compile(r"^/(.+)/([a-z]*)$", re.S)
_WORDS = re.compile(r"\w+")


@dataclass(frozen=True)
class Activation:
    book: str
    index: int  # the entry's place in its book
    label: str
    content: str
    position: str  # "before_char", "after_char" or "depth"
    depth: int
    role: str
    order: float  # insertion_order: lower goes earlier in the prompt
    priority: float  # what the budget keeps first (after constants): `priority`, else insertion_order
    constant: bool
    why: str


@dataclass
class Rule:
    """An entry as the scanner reads it: decorators applied, keys compiled on first use."""

    entry: LoreEntry
    content: str
    position: str = "after_char"
    depth: int = 4
    role: str = "system"
    scan_depth: int | None = None
    always: bool = False
    never: bool = False
    also_any: list[str] = field(default_factory=list)
    none_of: list[str] = field(default_factory=list)
    patterns: dict = field(default_factory=dict)  # each key compiled once, on first use


@dataclass
class Scan:
    fired: list[Activation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # regex keys that failed or ran out of time
    regex_seconds: float = 0.0


def rule_for(entry: LoreEntry) -> Rule:
    ext = entry.extensions
    content, decorators = split_decorators(entry.content)
    rule = Rule(entry, content)
    st_position = ext.get("position")
    if st_position == 4:
        rule.position = "depth"
        rule.depth = _int(ext.get("depth"), 4)
        rule.role = _role(ext.get("role"), "system")
    elif st_position == 0 or (st_position is None and entry.position == "before_char"):
        rule.position = "before_char"
    rule.scan_depth = _int(ext.get("scan_depth"), None)
    for name, value in decorators:
        if name == "depth":
            rule.position, rule.depth = "depth", _int(value, rule.depth)
        elif name == "role":
            rule.role = _role(value.strip(), rule.role)
        elif name == "scan_depth":
            rule.scan_depth = _int(value, rule.scan_depth)
        elif name == "activate":
            rule.always = True
        elif name == "dont_activate":
            rule.never = True
        elif name == "additional_keys":
            rule.also_any = [k.strip() for k in value.split(",") if k.strip()]
        elif name == "exclude_keys":
            rule.none_of = [k.strip() for k in value.split(",") if k.strip()]
        elif name == "position":
            rule.position = "before_char" if value.strip() == "before_desc" else "after_char"
    return rule


KNOWN = {"depth", "role", "scan_depth", "activate", "dont_activate", "additional_keys", "exclude_keys", "position"}


def split_decorators(content: str) -> tuple[str, list[tuple[str, str]]]:
    """Leading `@@name value` lines → (the rest of the text, the decorators this scanner applies).

    A `@@@name` line is the fallback of the decorator above it, used only when that one is not known here."""
    lines = content.lstrip("\n").split("\n")
    applied: list[tuple[str, str]] = []
    need_fallback = False
    i = 0
    while i < len(lines) and lines[i].startswith("@@"):
        line = lines[i]
        fallback = line.startswith("@@@")
        name, _, value = line.lstrip("@").partition(" ")
        if not fallback or need_fallback:
            if name in KNOWN:
                applied.append((name, value))
                need_fallback = False
            else:
                need_fallback = not fallback or need_fallback
        i += 1
    return "\n".join(lines[i:]).strip("\n"), applied


def _role(value, default: str) -> str:
    return ROLES.get(value, default) if isinstance(value, (int, str)) else default


def _int(value, default):
    """A non-negative whole number from a JSON value, or `default`."""
    try:
        return max(0, int(value))
    except (TypeError, ValueError, OverflowError):
        return default


def _plain(key: str, case_sensitive: bool, whole_words: bool) -> re.Pattern:
    body = r"\s+".join(re.escape(part) for part in key.split())
    if whole_words:
        body = rf"(?<!\w){body}(?!\w)"
    return re.compile(body, 0 if case_sensitive else re.IGNORECASE)


def _regex(pattern: str, flags: str, case_sensitive: bool):
    """A compiled `regex` pattern, or None when it is invalid (then the key never matches, as the spec says)."""
    bits = regex.V0
    if "i" in flags or (not flags and not case_sensitive):
        bits |= regex.IGNORECASE
    bits |= regex.MULTILINE if "m" in flags else 0
    bits |= regex.DOTALL if "s" in flags else 0
    try:
        return regex.compile(pattern, bits)
    except (regex.error, OverflowError, RecursionError):
        return None


class Matcher:
    """Finds keys in messages (newest first); regex keys share one time budget per scan."""

    def __init__(self, messages: Sequence[str], scan: Scan):
        self.newest_first = list(reversed(messages))
        self.scan = scan
        self._words: list[set[str]] = []  # each message's words in lower case, made as deep as asked

    def _word_in(self, word: str, depth: int) -> int | None:
        """A one-word key, case-insensitive and whole: a set lookup per message instead of a search."""
        while len(self._words) < min(depth, len(self.newest_first)):
            self._words.append(set(_WORDS.findall(self.newest_first[len(self._words)].lower())))
        return next((n for n, words in enumerate(self._words[:depth], 1) if word in words), None)

    def find(self, key: str, rule: Rule, depth: int) -> int | None:
        """The 1-based message (newest first) in which `key` occurs, or None."""
        key, entry = key.strip(), rule.entry
        if not key:
            return None
        st = _ST_REGEX.match(key)
        if key not in rule.patterns:
            case = bool(entry.case_sensitive if entry.case_sensitive is not None else entry.extensions.get("case_sensitive"))
            if entry.use_regex or st:
                pattern, flags = (st.group(1), st.group(2)) if st else (key, "")
                rule.patterns[key] = _regex(pattern, flags, case) if len(pattern) <= MAX_PATTERN else None
            elif not case and entry.extensions.get("match_whole_words") is not False and _WORDS.fullmatch(key):
                rule.patterns[key] = key.lower()  # one word: found by lookup
            else:
                rule.patterns[key] = _plain(key, case, entry.extensions.get("match_whole_words") is not False)
        if isinstance(rule.patterns[key], str):
            return self._word_in(rule.patterns[key], depth)
        if entry.use_regex or st:
            return self._find_regex(rule.patterns[key], st.group(1) if st else key, entry, depth)
        pattern = rule.patterns[key]
        for n, text in enumerate(self.newest_first[:depth], 1):
            if pattern.search(text):
                return n
        return None

    def _find_regex(self, compiled, pattern: str, entry: LoreEntry, depth: int) -> int | None:
        if compiled is None:
            self.scan.notes.append(f"{entry.label}: regex key /{pattern[:60]}/ is invalid or too long (ignored)")
            return None
        for n, text in enumerate(self.newest_first[:depth], 1):
            left = SCAN_REGEX_BUDGET - self.scan.regex_seconds
            if left <= 0:
                self.scan.notes.append(f"{entry.label}: regex time budget spent, /{pattern[:60]}/ not run")
                return None
            started = time.perf_counter()
            try:
                found = compiled.search(text, timeout=min(REGEX_TIMEOUT, left))
            except TimeoutError:
                self.scan.notes.append(f"{entry.label}: regex key /{pattern[:60]}/ timed out (ignored)")
                return None
            finally:
                self.scan.regex_seconds += time.perf_counter() - started
            if found:
                return n
        return None


def _fires(rule: Rule, match: Matcher, depth: int) -> str | None:
    """Why the entry fires, or None."""
    entry = rule.entry
    if not entry.enabled or (rule.never and not rule.always):
        return None
    if rule.always:
        return "@@activate"
    if entry.constant and not entry.use_regex:
        return "constant"
    hit = next(((k, n) for k in entry.keys if (n := match.find(k, rule, depth)) is not None), None)
    if hit is None:
        return None
    why = f"key {hit[0].strip()!r} in message {hit[1]} (newest first, scan depth {depth})"
    secondary = entry.secondary_keys or []
    if entry.selective and secondary and not entry.use_regex:
        found = [k for k in secondary if match.find(k, rule, depth) is not None]
        logic = _int(entry.extensions.get("selectiveLogic"), AND_ANY)
        ok = {AND_ANY: bool(found), NOT_ALL: len(found) < len(secondary), NOT_ANY: not found, AND_ALL: len(found) == len(secondary)}
        if not ok.get(logic, bool(found)):
            return None
        why += f", secondary {'keys ' + ', '.join(map(repr, found)) if found else 'keys absent'}"
    if rule.also_any and not any(match.find(k, rule, depth) is not None for k in rule.also_any):
        return None
    if any(match.find(k, rule, depth) is not None for k in rule.none_of):
        return None
    return why


def scan(books: Sequence[tuple[str, Lorebook]], messages: Sequence[str]) -> Scan:
    """The entries of `books` ((name, book) pairs) that fire on `messages` (oldest first), each with why."""
    result = Scan()
    match = Matcher(messages, result)
    for book_name, book in books:
        default_depth = book.scan_depth if book.scan_depth is not None else DEFAULT_SCAN_DEPTH
        for index, rule in enumerate(compiled_rules(book)):
            if not rule.content.strip():
                continue  # an empty entry adds nothing, whatever matches
            why = _fires(rule, match, rule.scan_depth if rule.scan_depth is not None else default_depth)
            if why is None:
                continue
            e = rule.entry
            result.fired.append(Activation(
                book_name, index, e.label, rule.content, rule.position, rule.depth, rule.role, float(e.insertion_order),
                float(e.priority if e.priority is not None else e.insertion_order), bool(e.constant) or rule.always, why,
            ))
    return result


def compiled_rules(book: Lorebook) -> list[Rule]:
    """The book's rules, made once per book object (a card's book is read on every message)."""
    if book._rules is None:
        book._rules = [rule_for(e) for e in book.entries]
    return book._rules
