"""Command-line argument types that refuse a bad value while the arguments are parsed (exit 2, the reason on
the last line), before any data is read: numbers in a range, comma-separated lists of them."""
from __future__ import annotations

import argparse
import math

from recserve.config import integer, number as decimal_number

SEED_MAX = 2**31 - 1        # LightGBM's and hnswlib's seeds are 32-bit


def _limit(x: float) -> str:
    """A bound as the message shows it, exactly: 2147483647 (not 2.14748e+09), 0.99, 1e+12."""
    if isinstance(x, int):
        return str(x)
    short = f"{x:g}"
    return short if float(short) == x else repr(x)


def number(kind: type = int, low: float | None = None, high: float | None = None, above: bool = False):
    """An argparse type: ``kind`` (int or float), finite, at least ``low`` (above it when ``above``) and at
    most ``high``."""
    def parse(text: str):
        try:
            v = (integer if kind is int else decimal_number)(text)      # decimal only: not 1_0, 0x10 or ٣
        except ValueError:
            raise argparse.ArgumentTypeError(f"{'an integer' if kind is int else 'a number'}, not {text!r}") \
                from None
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
        if low is not None and (v <= low if above else v < low):
            raise argparse.ArgumentTypeError(
                f"must be {'above' if above else 'at least'} {_limit(low)}, not {text}")
        if high is not None and v > high:
            raise argparse.ArgumentTypeError(f"must be at most {_limit(high)}, not {text}")
        return v

    return parse


def number_list(kind: type = int, low: float | None = None, high: float | None = None):
    """``"16,32,64"`` -> [16, 32, 64]: at least one, each as :func:`number` checks it."""
    one = number(kind, low, high)

    def parse(text: str) -> list:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError("at least one value, comma separated")
        return [one(p) for p in parts]

    return parse


positive_int = number(int, 1)
seed = number(int, 0, SEED_MAX)
