"""Masking secrets wherever the agent shows or ships text.

A value is a secret when it is the API key, or the value of an environment variable whose name
matches one of the secret patterns (shell globs, case-insensitive: ``*TOKEN*``, ``*SECRET*``,
``*PASSWORD*``, ``*KEY*`` … by default; setting ``secret_patterns``). A :class:`Redactor` holds
those values and replaces each occurrence in free text (run output, agent log lines, state
messages) with ``********``; it also hides the password of any ``scheme://user:password@``
URL. Where text is shown by name (``flow-run inspect``'s env, ``config view``), the value of a
secret-looking name is masked whatever it is.

Only values of at least :data:`MIN_SECRET_LENGTH` characters taken from the environment are
searched for in free text: ``FEATURE_KEY_ENABLED=true`` must not turn every "true" in the logs
into stars. The API key is masked at any length.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

MASK = "********"
MIN_SECRET_LENGTH = 6
DEFAULT_SECRET_PATTERNS: tuple[str, ...] = (
    "*TOKEN*",
    "*SECRET*",
    "*PASSWORD*",
    "*PASSWD*",
    "*KEY*",
    "*CREDENTIAL*",
)
# scheme://user:password@host — keep the user, hide the password.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*:)[^\s/@]+@")

Sink = Callable[[str, str], None]


def is_secret_name(name: str, patterns: Iterable[str] = DEFAULT_SECRET_PATTERNS) -> bool:
    """Whether an environment variable (or setting, or dict key) of this name holds a secret."""
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, pattern.upper()) for pattern in patterns)


def mask_env(
    env: Mapping[str, str], patterns: Iterable[str] = DEFAULT_SECRET_PATTERNS
) -> dict[str, str]:
    """A copy of ``env`` with the values of secret-looking names masked."""
    patterns = tuple(patterns)
    return {k: MASK if is_secret_name(k, patterns) else v for k, v in env.items()}


def mask_env_fields(value: Any, patterns: Iterable[str] = DEFAULT_SECRET_PATTERNS) -> Any:
    """A copy of a document (deployments, runs…) with every mapping under an ``env`` key masked
    by name, at any depth (a runner's options may carry an ``env`` of their own)."""
    patterns = tuple(patterns)
    if isinstance(value, Mapping):
        return {
            k: mask_env(v, patterns)
            if k == "env" and isinstance(v, Mapping)
            else mask_env_fields(v, patterns)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(mask_env_fields(v, patterns) for v in value)
    return value


def _is_piece(line: str, piece: int) -> bool:
    """Whether a runner cut ``line`` from a longer one (it is full size: runners/base.py)."""
    if len(line) >= piece:
        return True
    # A byte-stream runner cuts at ``piece`` bytes of UTF-8, moved back to a character's start.
    return len(line) >= piece // 4 and len(line.encode()) >= piece - 3


def _open_tail(text: str, secrets: Iterable[str]) -> tuple[int, set[str]]:
    """Where the longest end of ``text`` that starts a secret begins, and each such secret's rest."""
    cut, rests = len(text), set()
    for secret in secrets:
        for size in range(min(len(secret) - 1, len(text)), 0, -1):
            if text.endswith(secret[:size]):
                cut = min(cut, len(text) - size)
                rests.add(secret[size:])  # every size: "abab" may end "ab…" or be "ab" + "ab…"
    return cut, rests


def secret_values(
    env: Mapping[str, str], patterns: Iterable[str] = DEFAULT_SECRET_PATTERNS
) -> set[str]:
    patterns = tuple(patterns)
    return {
        value
        for name, value in env.items()
        if len(value) >= MIN_SECRET_LENGTH and is_secret_name(name, patterns)
    }


@dataclass(frozen=True)
class Redactor:
    """Replaces known secret values in text; cheap when there is nothing to hide."""

    patterns: tuple[str, ...] = DEFAULT_SECRET_PATTERNS
    secrets: frozenset[str] = frozenset()
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.secrets:
            # Longest first, so a secret that contains another is masked whole.
            ordered = sorted(self.secrets, key=len, reverse=True)
            pattern = re.compile("|".join(re.escape(s) for s in ordered))
            object.__setattr__(self, "_pattern", pattern)

    @classmethod
    def build(
        cls,
        patterns: Iterable[str] = DEFAULT_SECRET_PATTERNS,
        env: Mapping[str, str] | None = None,
        extra: Iterable[str | None] = (),
    ) -> Redactor:
        """Secrets from ``env`` (by name) plus ``extra`` values such as the API key."""
        patterns = tuple(patterns)
        found = secret_values(env or {}, patterns)
        found |= {value for value in extra if value}
        return cls(patterns, frozenset(found))

    def with_env(self, env: Mapping[str, str]) -> Redactor:
        """This redactor plus the secrets of ``env`` (e.g. a run's deployment and run env)."""
        more = secret_values(env, self.patterns) - self.secrets
        return self if not more else Redactor(self.patterns, self.secrets | more)

    def with_secrets(self, secrets: Iterable[str]) -> Redactor:
        """This redactor plus ``secrets`` (e.g. a git token the agent read for a run)."""
        more = frozenset(s for s in secrets if s) - self.secrets
        return self if not more else Redactor(self.patterns, self.secrets | more)

    def redact(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        if "://" in text:
            text = _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)
        return text

    def redact_value(self, value: Any) -> Any:
        """Strings redacted, containers walked; a dict key that looks secret hides its value."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            return {
                k: MASK
                if isinstance(k, str)
                and is_secret_name(k, self.patterns)
                and v not in (None, "")
                # "token_env" and the like hold the NAME of a variable, which hides nothing.
                and not k.endswith("_env")
                else self.redact_value(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self.redact_value(v) for v in value)
        return value

    def mask_env(self, env: Mapping[str, str]) -> dict[str, str]:
        return mask_env(env, self.patterns)

    def wrap_sink(self, sink: Sink, piece: int) -> Sink:
        """A run-output sink that redacts each line before passing it on (see :meth:`lines`)."""
        redact = self.lines(piece)

        def redacting(stream: str, line: str) -> None:
            sink(stream, redact(stream, line))

        return redacting

    def lines(self, piece: int) -> Callable[[str, str], str]:
        """``redact(stream, line)`` for one run's output, a secret cut by a long line's split too.

        A runner passes a line longer than ``piece`` on in pieces (``LINE_PIECE``). A
        secret the cut falls inside is half in one piece and half in the next, and neither half
        matches on its own. So a full-size piece that ends with the start of a secret has that
        end masked, and the next piece of the stream is masked where it starts with the rest.
        The cost of not holding pieces back (live logs stay live): a giant line whose cut falls
        after what merely looks like a secret's first characters loses them to the mask.
        """
        pending: dict[str, set[str]] = {}  # stream -> the rests a secret cut in two may end with

        def redact(stream: str, line: str) -> str:
            cut_from_longer = _is_piece(line, piece)
            rests = pending.pop(stream, set())
            head = max((r for r in rests if line.startswith(r)), key=len, default="")
            text = self.redact(line[len(head) :])
            if head:
                text = MASK + text
            if cut_from_longer and self.secrets:
                cut, rests = _open_tail(text, self.secrets)
                if rests:
                    pending[stream] = rests
                    text = text[:cut] + MASK
            return text

        return redact

    def __call__(
        self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> Mapping[str, Any]:
        """A structlog processor: place it after ``format_exc_info``, before the renderer."""
        redacted: dict[str, Any] = self.redact_value(event_dict)
        return redacted
