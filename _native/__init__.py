"""Compiled hot paths of ldpool: ELF table scans, symbol lookup, relocation."""
