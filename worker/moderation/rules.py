"""The local, dependency-free checker: patterns from a TOML rules file on normalised text.

Why normalise first: a word list is only as good as its worst spelling, and the cheap
tricks (``PIKACHÚ``, ``p1k4chu``, ``p i k a c h u``, ``p.i.k.a.c.h.u``, Cyrillic look-alike
letters, zero-width spaces) should not get a prompt past it. Every prompt is therefore
checked in a few spellings (``text_variants``): accents stripped and case folded, leetspeak
undone (``1`` read as ``i`` and as ``l``), and runs of single letters joined. Patterns are
normalised the same way (without the leetspeak step, so ``c-3po`` stays itself) and match
whole words only: ``kill`` does not match ``skill``, ``ass`` does not match ``class``.

The file format is documented at the top of ``default_rules.toml``.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegen.worker.moderation.verdict import ModerationConfigError, Verdict

#: Shipped with the package; used when no rules file is configured.
DEFAULT_RULES_FILE = Path(__file__).with_name("default_rules.toml")
SOURCE = "rules"

_LEET = {"0": "o", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
_LEET_ONE_AS_I = str.maketrans({**_LEET, "1": "i"})
_LEET_ONE_AS_L = str.maketrans({**_LEET, "1": "l"})
#: Cyrillic and Greek letters that look like Latin ones (after case folding), by Unicode name.
_LOOK_ALIKES = {
    "CYRILLIC SMALL LETTER A": "a",
    "CYRILLIC SMALL LETTER VE": "b",
    "CYRILLIC SMALL LETTER IE": "e",
    "CYRILLIC SMALL LETTER IO": "e",
    "CYRILLIC SMALL LETTER KA": "k",
    "CYRILLIC SMALL LETTER EM": "m",
    "CYRILLIC SMALL LETTER EN": "h",
    "CYRILLIC SMALL LETTER O": "o",
    "CYRILLIC SMALL LETTER ER": "p",
    "CYRILLIC SMALL LETTER ES": "c",
    "CYRILLIC SMALL LETTER TE": "t",
    "CYRILLIC SMALL LETTER U": "y",
    "CYRILLIC SMALL LETTER HA": "x",
    "CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I": "i",
    "CYRILLIC SMALL LETTER JE": "j",
    "CYRILLIC SMALL LETTER DZE": "s",
    "GREEK SMALL LETTER ALPHA": "a",
    "GREEK SMALL LETTER BETA": "b",
    "GREEK SMALL LETTER EPSILON": "e",
    "GREEK SMALL LETTER IOTA": "i",
    "GREEK SMALL LETTER KAPPA": "k",
    "GREEK SMALL LETTER NU": "v",
    "GREEK SMALL LETTER OMICRON": "o",
    "GREEK SMALL LETTER RHO": "p",
    "GREEK SMALL LETTER TAU": "t",
    "GREEK SMALL LETTER UPSILON": "u",
    "GREEK SMALL LETTER CHI": "x",
}
_CONFUSABLES = str.maketrans({unicodedata.lookup(n): latin for n, latin in _LOOK_ALIKES.items()})
_WORD = re.compile(r"[^\W_]+")
_CATEGORY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_REGEX_PREFIX = "re:"
_TERM_PREFIX = "@"
_TOP_KEYS = frozenset({"version", "allow", "terms", "rules"})
_RULE_KEYS = frozenset({"category", "patterns", "requires", "unless"})


def fold(text: str) -> str:
    """Compatibility-decompose, drop accents and invisible characters, case-fold."""
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(
        ch
        for ch in decomposed
        if not unicodedata.combining(ch) and unicodedata.category(ch) != "Cf"
    )
    return kept.casefold().translate(_CONFUSABLES)


def words(text: str) -> str:
    """The words of ``text`` separated by single spaces; punctuation and ``_`` split words."""
    return " ".join(_WORD.findall(text))


def join_single_letters(text: str) -> str:
    """``a k i l l e r`` -> ``akiller``: runs of two or more one-letter words become one word."""
    out: list[str] = []
    run: list[str] = []
    for token in [*text.split(), ""]:  # the empty sentinel flushes the last run
        if len(token) == 1:
            run.append(token)
            continue
        out.extend(["".join(run)] if len(run) > 1 else run)
        run = []
        if token:
            out.append(token)
    return " ".join(out)


def text_variants(prompt: str) -> tuple[str, ...]:
    """The spellings of a prompt that patterns are matched against (see the module doc)."""
    folded = fold(prompt)
    variants: dict[str, None] = {}
    for spelling in (folded, folded.translate(_LEET_ONE_AS_I), folded.translate(_LEET_ONE_AS_L)):
        plain = words(spelling)
        variants.setdefault(plain)
        variants.setdefault(join_single_letters(plain))
    return tuple(variants)


def _phrase_regex(phrase: str) -> str | None:
    """A phrase as regex source: its words with optional spaces, plus its spelled-out form."""
    tokens = words(fold(phrase)).split()
    if not tokens:
        return None
    alternatives = [" ?".join(map(re.escape, tokens))]
    letters = "".join(tokens)
    if len(letters) >= 3:  # "k i l l": also caught when an article joins the letter run
        alternatives.append(" ".join(map(re.escape, letters)))
    return "|".join(alternatives)


@dataclass(frozen=True)
class Rule:
    """Refuses with ``category`` when every group matches a variant and ``unless`` none."""

    category: str
    groups: tuple[re.Pattern[str], ...]
    unless: re.Pattern[str] | None = None

    def matches(self, variants: Sequence[str]) -> bool:
        if self.unless is not None and any(self.unless.search(v) for v in variants):
            return False
        return all(any(group.search(v) for v in variants) for group in self.groups)


class _Loader:
    """Turns the parsed TOML into rules; every problem names the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.terms: dict[str, list[str]] = {}

    def fail(self, problem: str) -> ModerationConfigError:
        return ModerationConfigError(f"moderation rules file {self.path}: {problem}")

    def strings(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{where} must be a list of strings")
        return value

    def group(self, entries: Iterable[str], where: str) -> re.Pattern[str]:
        sources: list[str] = []
        for entry in entries:
            if entry.startswith(_TERM_PREFIX):
                name = entry[len(_TERM_PREFIX) :]
                if name not in self.terms:
                    raise self.fail(f"{where}: unknown term list '{entry}'")
                sources.extend(self.pattern(t, f"terms.{name}") for t in self.terms[name])
            else:
                sources.append(self.pattern(entry, where))
        if not sources:
            raise self.fail(f"{where} is empty")
        return re.compile(r"(?<!\w)(?:" + "|".join(sources) + r")(?!\w)")

    def pattern(self, entry: str, where: str) -> str:
        if entry.startswith(_REGEX_PREFIX):
            source = entry[len(_REGEX_PREFIX) :]
            try:
                re.compile(source)
            except re.error as exc:
                raise self.fail(f"{where}: bad regex {source!r}: {exc}") from None
            return f"(?:{source})"
        regex = _phrase_regex(entry)
        if regex is None:
            raise self.fail(f"{where}: pattern {entry!r} has no letters or digits")
        return regex

    def load(self, data: Mapping[str, Any]) -> tuple[re.Pattern[str] | None, tuple[Rule, ...]]:
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise self.fail(f"unknown top-level keys {unknown}; allowed: {sorted(_TOP_KEYS)}")
        if data.get("version", 1) != 1:
            raise self.fail(f"unsupported version {data['version']!r} (this imagegen reads 1)")
        terms = data.get("terms", {})
        if not isinstance(terms, dict):
            raise self.fail("[terms] must be a table of lists")
        self.terms = {name: self.strings(v, f"terms.{name}") for name, v in terms.items()}
        allow = self.strings(data.get("allow", []), "allow")
        rules = data.get("rules")
        if not isinstance(rules, list) or not rules:
            raise self.fail("no [[rules]] found")
        allowed = self.group(allow, "allow") if allow else None
        return allowed, tuple(self.rule(r, i) for i, r in enumerate(rules, start=1))

    def rule(self, raw: Any, number: int) -> Rule:
        where = f"rule #{number}"
        if not isinstance(raw, dict):
            raise self.fail(f"{where} must be a table")
        unknown = sorted(set(raw) - _RULE_KEYS)
        if unknown:
            raise self.fail(f"{where}: unknown keys {unknown}; allowed: {sorted(_RULE_KEYS)}")
        category = raw.get("category")
        if not isinstance(category, str) or not _CATEGORY_NAME.match(category):
            raise self.fail(f"{where}: category must be a snake_case name, got {category!r}")
        groups = []
        if "patterns" in raw:
            groups.append(self.group(self.strings(raw["patterns"], where), f"{where} patterns"))
        requires = raw.get("requires", [])
        if not isinstance(requires, list):
            raise self.fail(f"{where}: requires must be a list of lists")
        for i, entries in enumerate(requires, start=1):
            where_group = f"{where} requires[{i}]"
            groups.append(self.group(self.strings(entries, where_group), where_group))
        if not groups:
            raise self.fail(f"{where} ({category}) has neither patterns nor requires")
        unless = None
        if "unless" in raw:
            unless = self.group(self.strings(raw["unless"], where), f"{where} unless")
        return Rule(category, tuple(groups), unless)


class RulesModerator:
    """Refuses a prompt when a rule of the file matches it; the first matching rule wins."""

    name = SOURCE

    def __init__(self, rules: Sequence[Rule], *, allow: re.Pattern[str] | None = None) -> None:
        self.rules = tuple(rules)
        self.allow = allow

    @classmethod
    def from_file(cls, path: Path | None = None) -> RulesModerator:
        """Load and compile a rules file (the shipped default when ``path`` is None)."""
        path = path or DEFAULT_RULES_FILE
        loader = _Loader(path)
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise loader.fail(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
        except tomllib.TOMLDecodeError as exc:
            raise loader.fail(f"is not valid TOML ({exc})") from None
        allow, rules = loader.load(data)
        return cls(rules, allow=allow)

    def variants(self, prompt: str) -> tuple[str, ...]:
        """The spellings rules see, with the file's allowed phrases blanked out."""
        variants = text_variants(prompt)
        if self.allow is None:
            return variants
        return tuple(words(self.allow.sub(" ", v)) for v in variants)

    def check(self, prompt: str) -> Verdict:
        variants = self.variants(prompt)
        for rule in self.rules:
            if rule.matches(variants):
                return Verdict.refusal(rule.category, SOURCE)
        return Verdict.passed(SOURCE)
