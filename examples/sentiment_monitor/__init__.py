"""Financial news sentiment monitoring on the batch tier (see README.md)."""
