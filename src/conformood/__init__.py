"""conformood."""
