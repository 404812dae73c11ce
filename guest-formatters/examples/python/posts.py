"""Example formatter: turn every created or updated Bluesky post into one message
{"did":…,"rkey":…,"text":…,"langs":[…]} and drop every other event.

componentize-py generates the `wit_world` bindings at build time. An export that returns
`result<_, E>` or `result<T, E>` returns its ok value or raises `Err(E)`.
"""

import json
import re

import wit_world
from componentize_py_types import Err
from wit_world.imports.types import Action, Context, Event, Event_CommitOp, Message

POST_COLLECTION = "app.bsky.feed.post"
MIN_TEXT_LENGTH = "min-text-length"
DIGITS = re.compile(r"[0-9]+")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")

# Posts whose text has fewer Unicode code points than this are dropped. `configure` sets it once
# per instance, before any `format` call.
min_text_chars = 0


class WitWorld(wit_world.WitWorld):
    def configure(self, options: list[tuple[str, str]]) -> None:
        global min_text_chars
        value = 0
        for key, text in options:
            if key != MIN_TEXT_LENGTH:
                raise Err(f"unknown option `{key}`: the posts formatter takes only `{MIN_TEXT_LENGTH}`")
            # `int()` alone would also take signs, spaces, underscores and non-ASCII digits.
            if DIGITS.fullmatch(text) is None:
                raise Err(
                    f"invalid value `{text}` for option `{MIN_TEXT_LENGTH}`: expected a non-negative integer"
                )
            value = int(text)
        min_text_chars = value

    def format(self, event: Event, context: Context) -> list[Message]:
        if not isinstance(event, Event_CommitOp):
            return []
        op = event.value
        if op.collection != POST_COLLECTION or op.action not in (Action.CREATE, Action.UPDATE):
            return []

        uri = f"at://{op.did}/{op.collection}/{op.rkey}"
        if op.record is None:
            raise Err(f"the record of {uri} is missing")
        text, langs = read_post(op.record, uri)

        # A Python string is a sequence of code points, so `len` counts them.
        if len(text) < min_text_chars:
            return []

        value = json.dumps(
            {"did": op.did, "rkey": op.rkey, "text": text, "langs": langs},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return [Message(value=value.encode("utf-8"), key=None, headers=[], topic=None)]


def read_post(record_json: str, uri: str) -> tuple[str, list[str]]:
    """Read `text` and `langs` from a post record in atproto JSON, or raise `Err`."""
    try:
        record = json.loads(record_json, parse_constant=reject_constant)
    except ValueError as error:
        raise Err(f"the record of {uri} is not valid JSON: {error}") from None
    if has_lone_surrogate(record):
        raise Err(f"the record of {uri} is not valid JSON: a string contains a lone surrogate")
    if not isinstance(record, dict):
        raise Err(f"the record of {uri} is not a JSON object")

    text = record.get("text")
    if not isinstance(text, str):
        raise Err(f"the record of {uri} has no string `text`")

    langs = record.get("langs")
    if langs is None:
        langs = []
    elif not isinstance(langs, list) or not all(isinstance(lang, str) for lang in langs):
        raise Err(f"the record of {uri} has a `langs` that is not a list of strings")

    return text, langs


def has_lone_surrogate(value: object) -> bool:
    """Tell whether a string anywhere in a parsed JSON value contains a lone surrogate.

    `json.loads` turns an escape such as "\\ud800" without its pair into a lone surrogate, which
    is not Unicode text and cannot be encoded as UTF-8. A valid pair becomes one code point.
    """
    if isinstance(value, str):
        return LONE_SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(has_lone_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(has_lone_surrogate(key) or has_lone_surrogate(item) for key, item in value.items())
    return False


def reject_constant(name: str) -> None:
    """Reject `NaN`, `Infinity` and `-Infinity`, which Python's json accepts but JSON does not."""
    raise ValueError(f"`{name}` is not a JSON value")
