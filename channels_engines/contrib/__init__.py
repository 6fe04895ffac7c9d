"""Hooks that ship with channels_engines, each behind an optional extra."""
