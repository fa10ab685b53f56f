"""marketpulse runtime stage."""
