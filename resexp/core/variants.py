"""He et al.'s shortcut options, said once: the config value, the paper's letter and the net-name fragment.

A tiny module with no dependencies, so the config, the model, run naming and the report all
read one table (the report does not import the config's pydantic schema).
"""

from __future__ import annotations

from enum import Enum

__all__ = ["ShortcutOption"]


class ShortcutOption(Enum):
    """What Ws is where a block changes shape (stride 2, more channels); `model.projection` holds the value."""

    A = "zero_pad"  # subsample and pad with zero channels: no parameters
    B = "learned"  # a learned 1x1 projection + norm where the shape changes, the identity elsewhere
    C = "learned_all"  # a learned projection on every block

    @property
    def letter(self) -> str:
        """The paper's name: `A`, `B` or `C` (`ResNet-20, option A`)."""
        return self.name

    @property
    def tag(self) -> str:
        """The fragment of a net's name and run id: `resnet20-a`."""
        return self.name.lower()

    def learned(self, shape_changes: bool) -> bool:
        """Whether a block's Ws is a learned projection (else the identity or the zero-pad)."""
        return self is ShortcutOption.C or (self is ShortcutOption.B and shape_changes)

    @classmethod
    def parse(cls, text: object) -> ShortcutOption | None:
        """The option a config value or a letter names (`learned`, `B`, `b`), or None."""
        key = str(text).lower()
        return next((o for o in cls if key in (o.value, o.tag)), None)
