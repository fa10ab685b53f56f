"""marketpulse export stage."""
