"""Helpers every layer uses, written once: progress policy, atomic files, sorted-key sets."""
