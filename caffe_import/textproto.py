"""A protobuf text-format reader that keeps going past fields our schema does not know.

Caffe forks add fields freely (the Jigsaw++ training net carries `siamese_size`, `rand_jump`, a `MergeData`
layer with its own param message). `google.protobuf.text_format` either stops at the first unknown field or,
with `allow_unknown_field`, drops it without telling which. We need to parse on, collect every unknown field
with its path and line, and resolve the PoolingParameter field-13 collision (BVLC `round_mode` vs forks'
`ceil_mode`) explicitly. So this module tokenizes the text itself and fills messages through their descriptors.

Grammar handled (the subset of text format that prototxts use): `name: value`, `name { ... }`, `name: { ... }`,
`name < ... >`, lists `name: [a, b]`, optional `;`/`,` separators, `#` comments, single/double quoted strings
with C escapes and adjacent-string concatenation, ints (decimal/hex/octal), floats (incl. `inf`, `nan`, `1e-4f`),
enum names or numbers, booleans.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from caffe_import.errors import CaffeImportError

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+) |
    (?P<nl>\n) |
    (?P<comment>\#[^\n]*) |
    (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*') |
    (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?)) |
    (?P<ident>[-+]?[A-Za-z_][A-Za-z0-9_.]*) |
    (?P<punct>[{}<>:\[\],;])
    """,
    re.VERBOSE,
)

_INT_TYPES = {
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_SFIXED64,
}
_FLOAT_TYPES = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    line: int


@dataclass(frozen=True)
class UnknownField:
    """A field the schema lacks: `path` is like `layer[3].transform_param.siamese_size`."""

    path: str
    line: int


@dataclass
class ParseReport:
    """What the reader skipped or reinterpreted, for the caller to turn into one warning."""

    unknown: list[UnknownField] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _tokenize(text: str, source: str) -> list[Token]:
    tokens: list[Token] = []
    line, pos = 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise CaffeImportError(f"{source}:{line}: unexpected character {text[pos]!r} in text prototxt.")
        kind = m.lastgroup or ""
        if kind == "nl":
            line += 1
        elif kind not in ("ws", "comment"):
            tokens.append(Token(kind, m.group(), line))
        pos = m.end()
    return tokens


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f",
            "v": "\v", "?": "?"}


def _unquote(tok: Token, source: str) -> str:
    body, out, i = tok.text[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in "xX":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:])
            if not m:
                raise CaffeImportError(f"{source}:{tok.line}: bad \\x escape in string {tok.text}.")
            out.append(chr(int(m.group(), 16)))
            i += 2 + m.end()
        elif nxt.isdigit():
            m = re.match(r"[0-7]{1,3}", body[i + 1:])
            out.append(chr(int(m.group(), 8)))  # type: ignore[union-attr]
            i += 1 + m.end()  # type: ignore[union-attr]
        else:
            raise CaffeImportError(f"{source}:{tok.line}: unknown escape \\{nxt} in string {tok.text}.")
    return "".join(out)


class _Reader:
    def __init__(self, text: str, source: str, report: ParseReport) -> None:
        self.tokens = _tokenize(text, source)
        self.pos = 0
        self.source = source
        self.report = report
        # the '{'/'<' still open, innermost last: (token, field path, message or None for a skipped unknown field)
        self.open: list[tuple[Token, str, Message | None]] = []

    # -- token helpers -------------------------------------------------------------------------------------------
    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise self._end_of_file()
        self.pos += 1
        return tok

    def _end_of_file(self) -> CaffeImportError:
        """The file ended inside a message: point at the innermost '{' that was never closed."""
        last = self.tokens[-1].line if self.tokens else 1
        if not self.open:
            return CaffeImportError(f"{self.source}:{last}: unexpected end of file (a value is missing).")
        brace, path, msg = self.open[-1]
        closing = "}" if brace.text == "{" else ">"
        name = getattr(msg, "name", "") if msg is not None and "name" in msg.DESCRIPTOR.fields_by_name else ""
        what = f"{path or 'the message'}" + (f" (name {name!r})" if name else "")
        more = f"; {len(self.open) - 1} enclosing one(s) are open too" if len(self.open) > 1 else ""
        return CaffeImportError(f"{self.source}:{brace.line}: the '{brace.text}' of {what} opened on line "
                                f"{brace.line} is never closed (the file ends at line {last}{more}); add the missing "
                                f"'{closing}'.")

    def accept(self, text: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.kind == "punct" and tok.text == text:
            self.pos += 1
            return True
        return False

    def fail(self, tok: Token, what: str) -> CaffeImportError:
        return CaffeImportError(f"{self.source}:{tok.line}: {what} (found {tok.text!r}).")

    # -- generic values (used for unknown fields, which must still be skipped correctly) ---------------------------
    def read_scalar(self) -> Token:
        tok = self.next()
        if tok.kind == "string":
            while (nxt := self.peek()) is not None and nxt.kind == "string":  # adjacent strings concatenate
                self.pos += 1
                tok = Token("string", tok.text[:-1] + nxt.text[1:], tok.line)
            return tok
        if tok.kind in ("number", "ident"):
            return tok
        raise self.fail(tok, "expected a value")

    def skip_value(self, path: str = "an unknown field") -> None:
        """Skip the value of an unknown field (`path`): a scalar, a list, or a nested message."""
        if self.accept(":"):
            if self.accept("["):
                while not self.accept("]"):
                    if self.accept("{") or self.accept("<"):
                        self.skip_message_body(path)
                    else:
                        self.read_scalar()
                    self.accept(",")
                return
            if not (self.accept("{") or self.accept("<")):
                self.read_scalar()
                return
        elif not (self.accept("{") or self.accept("<")):
            raise self.fail(self.next(), "expected ':' or '{' after a field name")
        self.skip_message_body(path)

    def skip_message_body(self, path: str = "an unknown field") -> None:
        """Skip to the '}'/'>' matching the one just accepted (tracked in `open` for end-of-file messages)."""
        base = len(self.open)
        self.open.append((self.tokens[self.pos - 1], f"{path} (unknown to the schema)", None))
        while len(self.open) > base:
            tok = self.next()
            if tok.kind == "punct" and tok.text in "{<":
                self.open.append((tok, f"a value inside {path}", None))
            elif tok.kind == "punct" and tok.text in "}>":
                self.open.pop()

    # -- typed parsing ---------------------------------------------------------------------------------------------
    def parse_message(self, msg: Message, path: str, closing: str | None) -> None:
        desc: Descriptor = msg.DESCRIPTOR
        while True:
            tok = self.peek()
            if tok is None:
                if closing is None:
                    return
                self.next()  # raises "unexpected end of file"
            assert tok is not None
            if closing is not None and tok.kind == "punct" and tok.text in "}>":
                self.pos += 1
                return
            name_tok = self.next()
            if name_tok.kind != "ident":
                raise self.fail(name_tok, "expected a field name")
            name = name_tok.text
            fdesc = desc.fields_by_name.get(name)
            if fdesc is None:
                if self._fork_alias(msg, name, name_tok, path):
                    self.accept(";") or self.accept(",")
                    continue
                unknown = f"{path}.{name}" if path else name
                self.report.unknown.append(UnknownField(unknown, name_tok.line))
                self.skip_value(unknown)
            else:
                self.parse_field(msg, fdesc, f"{path}.{name}" if path else name)
            self.accept(";") or self.accept(",")

    def parse_field(self, msg: Message, fdesc: FieldDescriptor, path: str) -> None:
        is_msg = fdesc.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP)
        # protobuf >= 6 (upb) drops FieldDescriptor.label in favour of is_repeated.
        repeated = fdesc.is_repeated if hasattr(fdesc, "is_repeated") else fdesc.label == FieldDescriptor.LABEL_REPEATED
        has_colon = self.accept(":")
        if has_colon and self.accept("["):
            if not repeated:
                raise self.fail(self.tokens[self.pos - 1], f"field '{path}' is not repeated but has a list value")
            index = 0
            while not self.accept("]"):
                self._parse_one(msg, fdesc, f"{path}[{index}]", is_msg, repeated)
                index += 1
                self.accept(",")
            return
        if is_msg and not has_colon:
            pass  # `name { ... }`
        elif not is_msg and not has_colon:
            raise self.fail(self.next(), f"expected ':' after scalar field '{path}'")
        suffix = f"[{len(getattr(msg, fdesc.name))}]" if repeated else ""
        self._parse_one(msg, fdesc, path + suffix, is_msg, repeated)

    def _parse_one(self, msg: Message, fdesc: FieldDescriptor, path: str, is_msg: bool, repeated: bool) -> None:
        if is_msg:
            open_tok = self.next()
            if open_tok.kind != "punct" or open_tok.text not in "{<":
                raise self.fail(open_tok, f"expected '{{' to open message field '{path}'")
            sub = getattr(msg, fdesc.name).add() if repeated else getattr(msg, fdesc.name)
            if not repeated:
                sub.SetInParent()
            self.open.append((open_tok, path, sub))
            self.parse_message(sub, path, "}" if open_tok.text == "{" else ">")
            self.open.pop()
            return
        tok = self.read_scalar()
        value = self._convert(fdesc, tok, path)
        if repeated:
            getattr(msg, fdesc.name).append(value)
        else:
            setattr(msg, fdesc.name, value)

    def _convert(self, fdesc: FieldDescriptor, tok: Token, path: str) -> Any:
        text = tok.text
        try:
            if fdesc.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                if tok.kind != "string":
                    raise ValueError("expected a quoted string")
                value = _unquote(tok, self.source)
                return value.encode("latin-1") if fdesc.type == FieldDescriptor.TYPE_BYTES else value
            if fdesc.type == FieldDescriptor.TYPE_BOOL:
                if text in ("true", "True", "t", "1"):
                    return True
                if text in ("false", "False", "f", "0"):
                    return False
                raise ValueError("expected true or false")
            if fdesc.type == FieldDescriptor.TYPE_ENUM:
                enum = fdesc.enum_type
                if tok.kind == "number":
                    number = int(text, 0)
                    if number not in enum.values_by_number:
                        raise ValueError(f"{number} is not a value of enum {enum.name}")
                    return number
                if text not in enum.values_by_name:
                    raise ValueError(f"expected one of {sorted(enum.values_by_name)}")
                return enum.values_by_name[text].number
            if fdesc.type in _INT_TYPES:
                if tok.kind != "number" or re.search(r"[.eEfF]", text) and not text.lower().startswith(("0x", "-0x")):
                    raise ValueError("expected an integer")
                return int(text, 0) if not re.fullmatch(r"[-+]?0\d+", text) else int(text, 8)
            if fdesc.type in _FLOAT_TYPES:
                low = text.lower().lstrip("+")
                if low in ("inf", "infinity", "inff"):
                    return math.inf
                if low in ("-inf", "-infinity", "-inff"):
                    return -math.inf
                if low in ("nan", "-nan", "nanf"):
                    return math.nan
                if tok.kind != "number":
                    raise ValueError("expected a number")
                return float(text.rstrip("fF")) if not text.lower().startswith(("0x", "-0x")) else float(int(text, 16))
        except ValueError as exc:
            raise CaffeImportError(
                f"{self.source}:{tok.line}: bad value {text!r} for field '{path}' "
                f"({exc})."
            ) from None
        raise CaffeImportError(f"{self.source}:{tok.line}: field '{path}' has an unsupported type.")

    def _fork_alias(self, msg: Message, name: str, tok: Token, path: str) -> bool:
        """Fields that forks defined with a number BVLC uses for something else; mapped explicitly, never silently.

        PoolingParameter field 13 is BVLC's `round_mode` enum (CEIL=0, FLOOR=1); forks (e.g. the PyTorch-to-Caffe
        tools, SSD-era forks) define it as `bool ceil_mode` (default true), and Facebook's fork had
        `bool torch_pooling` meaning floor rounding. In text the names differ, so we can map them exactly.
        """
        if msg.DESCRIPTOR.name != "PoolingParameter" or name not in ("ceil_mode", "torch_pooling"):
            return False
        self.skip_colon()
        value_tok = self.read_scalar()
        if value_tok.text not in ("true", "false", "True", "False", "1", "0"):
            raise self.fail(value_tok, f"'{path}.{name}' must be true or false")
        flag = value_tok.text in ("true", "True", "1")
        floor = (not flag) if name == "ceil_mode" else flag
        mode = "FLOOR" if floor else "CEIL"
        msg.round_mode = msg.DESCRIPTOR.fields_by_name["round_mode"].enum_type.values_by_name[mode].number
        self.report.notes.append(
            f"line {tok.line}: fork field '{path}.{name}: {value_tok.text}' read as BVLC 'round_mode: {mode}' "
            f"(field 13 of PoolingParameter; the two meanings collide on the wire)."
        )
        return True

    def skip_colon(self) -> None:
        if not self.accept(":"):
            raise self.fail(self.next(), "expected ':'")


def parse_text(text: str, message: Message, *, source: str = "<string>") -> ParseReport:
    """Fill `message` from protobuf text; return what was unknown or reinterpreted instead of failing on it."""
    report = ParseReport()
    _Reader(text, source, report).parse_message(message, "", None)
    return report
