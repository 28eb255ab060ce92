"""Finite numbers: the one check every service uses for floats from requests, configs and flags.

A float that is NaN or infinite passes `x >= 0` style range checks in surprising ways (NaN fails
every comparison, so `not x < 0` is true), and `float("nan")` / `float("inf")` parse from text, so
each boundary checks finiteness explicitly with these helpers.
"""

from __future__ import annotations

import argparse
import math


def is_finite_number(value: object) -> bool:
    """True for an int or a finite float; False for bool, NaN, infinities and anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


def finite_float(text: str) -> float:
    """argparse `type=`: a finite float ("nan", "inf" and "1e999" are refused with a usage error)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value
