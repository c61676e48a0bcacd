"""Events a group member missed: gateway/live/push.py numbers each sender's telemetry events per
group, and the channel layer may drop some without telling anyone. The dashboard's sockets and the
API's stream read the numbers through this one rule."""

from typing import Any


class SenderGaps:
    """Remembers each sender's last event number; says when a number was skipped."""

    def __init__(self) -> None:
        self.last_numbers: dict[str, int] = {}  # sender -> the number of its last event

    def missed(self, event: dict[str, Any]) -> bool:
        """Whether events of this event's sender were skipped before it (a sender's first counts as none)."""
        sender, number = event.get("sender"), event.get("n")
        if sender is None or number is None:
            return False
        last = self.last_numbers.get(sender)
        self.last_numbers[sender] = number
        return last is not None and number > last + 1
