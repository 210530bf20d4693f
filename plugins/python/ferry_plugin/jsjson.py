"""JSON read and written with JavaScript's semantics (``JSON.parse`` and
``JSON.stringify``), which the seed's rules are defined by:

* every number is a double (integers past 2^53 round, ``1e400`` is
  ``Infinity``) and is written the ECMAScript way (``1.0`` -> ``1``,
  ``1e21`` -> ``1e+21``, non-finite -> ``null``);
* object keys that are array indices come first, ascending; the others keep
  their first place in the document (a repeated key keeps the last value);
* ``NaN``/``Infinity`` literals, lone surrogate escapes and nesting deeper
  than 128 levels are refused (the Rust plugin's JSON parser refuses them,
  and all three plugins must agree).
"""

import json

MISSING = object()
MAX_DEPTH = 128

def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def parse(text: str):
    refuse_unportable(text)
    return json.loads(text, parse_int=float, parse_float=float, parse_constant=_no_constant)


def refuse_unportable(text: str) -> None:
    """Refuses what JSON parsers disagree on (the Rust rules' scan, same
    messages): nesting deeper than MAX_DEPTH and a surrogate escape that is
    not half of a pair."""
    if text.count("[") + text.count("{") <= MAX_DEPTH and "\\u" not in text:
        return
    depth, in_string, high, i = 0, False, False, 0
    while i < len(text):
        c = text[i]
        if in_string:
            if c == "\\" and text[i + 1 : i + 2] == "u":
                hexits = text[i + 2 : i + 6]
                unit = int(hexits, 16) if len(hexits) == 4 and all(h in "0123456789abcdefABCDEF" for h in hexits) else None
                # A high half must be followed at once by a low half.
                if unit is not None and 0xD800 <= unit <= 0xDBFF and not high:
                    high = True
                elif unit is not None and 0xDC00 <= unit <= 0xDFFF and high:
                    high = False
                elif unit is not None and 0xD800 <= unit <= 0xDFFF:
                    raise ValueError("a lone surrogate escape is not text")
                elif high:
                    raise ValueError("a lone surrogate escape is not text")
                i += 6
                continue
            if high:
                raise ValueError("a lone surrogate escape is not text")
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        elif c in "]}":
            depth = max(depth - 1, 0)
        i += 1


def falsy(v) -> bool:
    """JavaScript falsiness of a parsed value (NaN cannot occur)."""
    return v is None or v is False or v == "" or (isinstance(v, float) and v == 0.0)


def stringify(v) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float):
        return number(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ",".join(stringify(x) for x in v) + "]"
    indices = sorted((k for k in v if _array_index(k) is not None), key=_array_index)
    others = [k for k in v if _array_index(k) is None]
    return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + stringify(v[k]) for k in indices + others) + "}"


def _array_index(key: str):
    if key.isdigit() and key.isascii() and str(int(key)) == key and int(key) < 2**32 - 1:
        return int(key)
    return None


def number(x: float) -> str:
    """ECMAScript's Number::toString, from the shortest round-trip digits."""
    if x != x or x in (float("inf"), float("-inf")):
        return "null"
    if x == 0.0:
        return "0"
    sign = "-" if x < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    # The value is 0.<digits> x 10^n.
    n = len(whole) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    n -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    head = digits[0] + ("." + digits[1:] if k > 1 else "")
    return sign + head + "e" + ("-" if e < 0 else "+") + str(abs(e))
