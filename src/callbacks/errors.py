"""The errors a training run stops with when it cannot do what it was asked to; each message names what was
expected, where, and the fix (they are :class:`~src.utils.checkpoint.UserError`: Hydra prints the message alone and
the process exits with status 1)."""

from __future__ import annotations

from src.utils.checkpoint import UserError


class NonFiniteTrainingError(FloatingPointError, UserError):
    """Training produced a non-finite loss, gradient or weight; the message names the step, the learning rates and
    the loss terms, and says which checkpoint holds the last finite weights."""


class DataError(ValueError, UserError):
    """The data cannot give what the run asks for: no full training batch, a split without any labelled pixel."""


class IncompleteRunError(RuntimeError, UserError):
    """Training ended without having trained or validated what the config asked for (max_steps not reached, a
    scheduled validation missing)."""
