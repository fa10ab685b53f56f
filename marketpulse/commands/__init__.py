"""The `marketpulse` subcommands, one module per stage; `marketpulse.cli` registers them."""
