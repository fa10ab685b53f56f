"""marketpulse train stage."""
