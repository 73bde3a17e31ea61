"""`none`: the same pipeline with no update, the baseline every method is compared with."""

from .base import Method


class NoAdaptation(Method):
    name = "none"
    help = "no update: answers as the base model does"
    trains = "nothing"
