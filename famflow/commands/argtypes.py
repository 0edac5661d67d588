"""argparse value types shared by the command line's sub-commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from famflow.familial.errors import FamflowError

T = TypeVar("T")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a library parser: its FamflowError becomes argparse's error."""

    def parse_argument(text: str) -> T:
        try:
            return parse(text)
        except FamflowError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse_argument.__name__ = parse.__name__
    return parse_argument
